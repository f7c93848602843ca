"""Scores made comparable across slice levels: a healthy slice's expected score given its brain content.

A whole scan runs from the skull base (bone, sinuses, little brain) to the skull top (a ring of bone
round a small brain): such slices reconstruct worse than mid-level ones whatever they hold, so their
raw scores outrank lesions in the middle of the brain. With `score.normalize: content` calibrate
learns, on the healthy validation slices, how the score's median and spread vary with the slice's
brain content (the share of its head that is neither air nor bone), and a slice's score becomes
(score - median(content)) / spread(content): how unusual it is for a healthy slice with as much brain.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

TISSUE = (0.1, 0.9)  # of the model's input: darker is air or fat, brighter is bone (brain window)
BINS = 5  # content quantile bins the healthy median and spread are read in
MIN_PER_BIN = 5


def brain_content(images: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """The share of each slice's scored region (n, h, w) that is soft tissue, from its (n, h, w, 1)
    model input: low at the skull base and the skull top, high where the brain is."""
    x = images[..., 0]
    tissue = (x > TISSUE[0]) & (x < TISSUE[1]) & regions
    return tissue.sum(axis=(1, 2)) / np.maximum(regions.sum(axis=(1, 2)), 1)


@dataclass(frozen=True)
class ContentNormalizer:
    """Healthy scores' median and spread at a few content levels (interpolated between, held beyond)."""

    contents: tuple[float, ...]
    medians: tuple[float, ...]
    spreads: tuple[float, ...]

    @classmethod
    def fit(cls, content: np.ndarray, scores: np.ndarray) -> ContentNormalizer:
        """Learn from healthy slices: per content quantile bin, the scores' median and their spread
        (interquartile range / 1.349, the standard deviation of a normal), floored at a tenth of the
        overall spread so that a tight bin cannot blow its slices' scores up."""
        content, scores = np.asarray(content, dtype=float), np.asarray(scores, dtype=float)
        bins = max(1, min(BINS, len(scores) // MIN_PER_BIN))
        edges = np.unique(np.quantile(content, np.linspace(0, 1, bins + 1)))
        which = np.clip(np.searchsorted(edges, content, side="right") - 1, 0, max(len(edges) - 2, 0))
        floor = max(_spread(scores) / 10, 1e-12)
        rows = [
            (
                float(np.median(content[inside])),
                float(np.median(scores[inside])),
                max(_spread(scores[inside]), floor),
            )
            for inside in (which == b for b in np.unique(which))
        ]
        contents, medians, spreads = (tuple(values) for values in zip(*sorted(rows), strict=True))
        return cls(contents, medians, spreads)

    def apply(self, scores: np.ndarray, content: np.ndarray) -> np.ndarray:
        median = np.interp(content, self.contents, self.medians)
        spread = np.interp(content, self.contents, self.spreads)
        return (np.asarray(scores, dtype=float) - median) / spread

    def as_dict(self) -> dict[str, Any]:
        return {key: list(values) for key, values in asdict(self).items()}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> ContentNormalizer:
        return cls(*(tuple(float(v) for v in saved[key]) for key in ("contents", "medians", "spreads")))


def _spread(values: np.ndarray) -> float:
    low, high = np.percentile(values, [25, 75])
    return float(high - low) / 1.349
