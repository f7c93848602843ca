"""Scores made comparable across slice levels: a slice judged against healthy slices that look like it.

A whole scan runs from the skull base (petrous bone, sinuses, air-bone edges) to the skull top: such
slices reconstruct worse than mid-level ones whatever they hold, so their raw scores outrank lesions in
the middle of the brain. Calibrate learns, on the healthy validation slices, what a healthy score is for
each kind of slice, and a slice's score becomes (score - healthy median) / healthy spread: how unusual
it is for a healthy slice like it. Two references (`score.normalize`, `auto`: the better on validation):

- `content`: the median and spread as functions of the slice's brain content (the share of its scored
  region that is soft tissue), in a few quantile bins;
- `reference`: the median and spread of the healthy validation slices nearest to it in its level in its
  scan (where it is a slice of a scan) and its anatomy (the shares of its head that are soft tissue,
  bone and dark, and the head's share of the frame: what a lone slice or a partial scan has too). On
  real scans the level explains what the brain content does not: healthy scores fall steadily from the
  skull base up whatever the brain content.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from pipeline.core.registry import Registry

TISSUE = (0.1, 0.9)  # of the model's input: darker is air, fat or CSF, brighter is bone (brain window)
BINS = 5  # content quantile bins the healthy median and spread are read in
MIN_PER_BIN = 5
NEIGHBOURS = (10, 0.05, 50)  # reference: at least 10, a twentieth of the healthy slices, at most 50
LEVEL_WEIGHT = 10.0  # reference: a level difference counts this many times an anatomy difference (in spreads)
JUDGED_AT_ONCE = 256  # reference: slices judged per block, so (block, healthy slices, 4) gaps stay small


def brain_content(images: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """The share of each slice's scored region (n, h, w) that is soft tissue, from its (n, h, w, channels)
    model input's channel 0 (the brain window): low at the skull base and the skull top, high where the
    brain is."""
    x = images[..., 0]
    tissue = (x > TISSUE[0]) & (x < TISSUE[1]) & regions
    return tissue.sum(axis=(1, 2)) / np.maximum(regions.sum(axis=(1, 2)), 1)


@dataclass(frozen=True)
class SliceFacts:
    """What a slice's healthy reference is matched on, one value per slice."""

    content: np.ndarray  # soft-tissue share of the scored region (`brain_content`)
    anatomy: np.ndarray  # (n, 4): the head's soft-tissue, bone and dark shares, the head's share of the frame
    level: np.ndarray  # place in its scan, 0 lowest .. 1 highest; NaN for a lone slice

    @classmethod
    def of(
        cls, images: np.ndarray, regions: np.ndarray, heads: np.ndarray, levels: np.ndarray | None = None
    ) -> SliceFacts:
        """The facts of a batch: its (n, h, w, channels) model input (channel 0 read), scored regions
        and head masks (n, h, w), and each slice's level where known."""
        x = images[..., 0]
        area = np.maximum(heads.sum(axis=(1, 2)), 1)
        shares = [((x > low) & (x < high) & heads).sum(axis=(1, 2)) / area for low, high in _ANATOMY]
        anatomy = np.stack([*shares, heads.mean(axis=(1, 2))], axis=1) if len(x) else np.empty((0, 4))
        level = np.full(len(x), np.nan) if levels is None else np.asarray(levels, dtype=float)
        return cls(brain_content(images, regions), anatomy, level)

    def __getitem__(self, rows: np.ndarray) -> SliceFacts:
        return SliceFacts(self.content[rows], self.anatomy[rows], self.level[rows])


_ANATOMY = ((TISSUE[0], TISSUE[1]), (TISSUE[1], np.inf), (-np.inf, TISSUE[0]))  # tissue, bone, dark


class Normalizer(Protocol):
    """Fitted on healthy validation slices; `apply` gives any slice's score relative to them."""

    name: ClassVar[str]

    @classmethod
    def fit(cls, facts: SliceFacts, scores: np.ndarray, groups: np.ndarray | None = None) -> Normalizer: ...

    def apply(
        self, scores: np.ndarray, facts: SliceFacts, groups: np.ndarray | None = None
    ) -> np.ndarray: ...

    def as_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Normalizer: ...


NORMALIZERS: Registry[type[Normalizer]] = Registry("normaliser", "score.normalize")


@NORMALIZERS.register("content")
@dataclass(frozen=True)
class ContentNormalizer:
    """Healthy scores' median and spread at a few content levels (interpolated between, held beyond)."""

    name: ClassVar[str] = "content"
    contents: tuple[float, ...]
    medians: tuple[float, ...]
    spreads: tuple[float, ...]

    @classmethod
    def fit(
        cls, facts: SliceFacts, scores: np.ndarray, groups: np.ndarray | None = None
    ) -> ContentNormalizer:
        """Learn from healthy slices: per content quantile bin, the scores' median and their spread
        (interquartile range / 1.349, the standard deviation of a normal), floored at a tenth of the
        overall spread so that a tight bin cannot blow its slices' scores up."""
        content, scores = np.asarray(facts.content, dtype=float), np.asarray(scores, dtype=float)
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

    def apply(self, scores: np.ndarray, facts: SliceFacts, groups: np.ndarray | None = None) -> np.ndarray:
        median = np.interp(facts.content, self.contents, self.medians)
        spread = np.interp(facts.content, self.contents, self.spreads)
        return (np.asarray(scores, dtype=float) - median) / spread

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name} | {key: list(values) for key, values in asdict(self).items()}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> ContentNormalizer:
        return cls(*(tuple(float(v) for v in saved[key]) for key in ("contents", "medians", "spreads")))


@NORMALIZERS.register("reference")
@dataclass(frozen=True, eq=False)
class ReferenceNormalizer:
    """Healthy validation slices (their facts and scores); a slice is judged against its nearest ones.

    Distances are in units of each fact's spread over the reference, the level weighted LEVEL_WEIGHT
    times and left out where either slice has none. Applied to the reference's own slices (`groups`:
    their patients), a slice's neighbours come from other patients only, as they would for a new scan.
    """

    name: ClassVar[str] = "reference"
    levels: np.ndarray  # (m,), NaN where a reference slice has none
    anatomy: np.ndarray  # (m, 4)
    scores: np.ndarray  # (m,)
    floor: float  # a tenth of the reference's overall spread: no neighbourhood is judged tighter
    groups: np.ndarray | None = field(default=None, repr=False)  # patients; kept for calibration only

    @classmethod
    def fit(
        cls, facts: SliceFacts, scores: np.ndarray, groups: np.ndarray | None = None
    ) -> ReferenceNormalizer:
        scores = np.asarray(scores, dtype=float)
        floor = max(_spread(scores) / 10, 1e-12) if len(scores) else 1e-12
        return cls(
            np.asarray(facts.level, dtype=float),
            np.asarray(facts.anatomy, dtype=float),
            scores,
            floor,
            groups,
        )

    @property
    def neighbours(self) -> int:
        low, share, high = NEIGHBOURS
        return int(min(len(self.scores), max(low, min(high, round(share * len(self.scores))))))

    def _distances(self, facts: SliceFacts) -> np.ndarray:
        """(n, m) distances of the slices of `facts` to the reference slices."""
        scale = self.anatomy.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        gaps = (facts.anatomy[:, None, :] - self.anatomy[None, :, :]) / scale
        squared = np.square(gaps).sum(axis=2)
        level_scale = float(np.nanstd(self.levels)) if np.isfinite(self.levels).sum() > 1 else 0.0
        if level_scale > 0:
            level_gap = (facts.level[:, None] - self.levels[None, :]) / level_scale
            squared = squared + LEVEL_WEIGHT**2 * np.nan_to_num(np.square(level_gap), nan=0.0)
        return squared

    def apply(self, scores: np.ndarray, facts: SliceFacts, groups: np.ndarray | None = None) -> np.ndarray:
        scores = np.asarray(scores, dtype=float)
        groups = None if groups is None or self.groups is None else np.asarray(groups)
        judged = [
            self._judge(scores[rows], facts[rows], None if groups is None else groups[rows])
            for rows in (
                slice(start, start + JUDGED_AT_ONCE) for start in range(0, len(scores), JUDGED_AT_ONCE)
            )
        ]
        return np.concatenate(judged) if judged else scores

    def _judge(self, scores: np.ndarray, facts: SliceFacts, groups: np.ndarray | None) -> np.ndarray:
        """`apply` for a block of slices: each one's score against its nearest reference slices."""
        distances = self._distances(facts)
        if groups is not None:  # the reference's own patients: judged by others
            distances[groups[:, None] == self.groups[None, :]] = np.inf
        nearest = np.argsort(distances, axis=1, kind="stable")[:, : self.neighbours]
        neighbour_scores = self.scores[nearest]
        usable = np.isfinite(np.take_along_axis(distances, nearest, axis=1))
        neighbour_scores = np.where(usable, neighbour_scores, np.nan)
        median = np.nanmedian(neighbour_scores, axis=1)
        low, high = np.nanpercentile(neighbour_scores, [25, 75], axis=1)
        spread = np.maximum((high - low) / 1.349, self.floor)
        return (scores - median) / spread

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "levels": [None if np.isnan(v) else float(v) for v in self.levels],
            "anatomy": self.anatomy.tolist(),
            "scores": self.scores.tolist(),
            "floor": self.floor,
        }

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> ReferenceNormalizer:
        levels = np.array([np.nan if v is None else v for v in saved["levels"]], dtype=float)
        anatomy = np.array(saved["anatomy"], dtype=float).reshape(len(levels), -1)
        return cls(levels, anatomy, np.array(saved["scores"], dtype=float), float(saved["floor"]))


def load_normalizer(saved: dict[str, Any] | None) -> Normalizer | None:
    """A saved normaliser (`as_dict`); one saved before normalisers had names is a content normaliser."""
    if not saved:
        return None
    return NORMALIZERS.get(saved.get("name", ContentNormalizer.name)).from_dict(saved)


def _spread(values: np.ndarray) -> float:
    low, high = np.percentile(values, [25, 75])
    return float(high - low) / 1.349
