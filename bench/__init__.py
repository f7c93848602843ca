"""Benchmarks: measured, never asserted (tests assert behaviour)."""

import pipeline  # noqa: F401  (quiets TensorFlow's start-up logging before anything imports it)
