"""Benchmarks: measured, never asserted (tests assert behaviour)."""
