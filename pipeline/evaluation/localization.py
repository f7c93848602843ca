"""Where is the tumor? Pixel-level quality of the residual heat maps, on data that has tumor outlines.

A lesion mask is `Masks/<the slice's path below its class folder>.png` in the raw folder: the built-in
synthetic data writes one per tumor, a volume's mask is sliced there (`pipeline.data.slicing`); the
public 2D dataset has none. Outlines go through the same crop, padding and resizing as their slices,
so they line up with the model's input; the residual maps are compared with them inside the scored
region only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.core.config import PreprocessConfig, ThresholdConfig
from pipeline.data.classes import mask_path
from pipeline.data.images import decode, preprocess, read_image, to_grayscale


def tumor_outlines(raw_dir: Path, frame: pd.DataFrame, config: PreprocessConfig) -> np.ndarray | None:
    """(n, size, size) boolean outlines of the rows' tumors, aligned with their model inputs; None
    unless every row has one."""
    files = [raw_dir / mask_path(path) for path in frame["path"]]
    if not files or not all(file.is_file() for file in files):
        return None
    outlines = []
    for path, file in zip(frame["path"], files, strict=True):
        outline = to_grayscale(read_image(file)) > 0.5
        decoded = decode(raw_dir / path, config)
        aligned = preprocess(decoded.pixels, config, outline, decoded.head)[1]
        outlines.append(aligned > 0.5)
    return np.stack(outlines)


# The healthy validation pixels' percentiles `threshold.pixel: auto` chooses among (with the configured one)
PIXEL_PERCENTILES = (90.0, 95.0, 97.0, 98.0, 99.0, 99.5, 99.8, 99.9)
AUC_BINS = 512  # residual histogram bins behind the bootstrapped pixel ROC AUC


def pixel_metrics(maps: np.ndarray, outlines: np.ndarray, pixel_threshold: float) -> dict[str, float]:
    """Over the scored pixels (maps > 0): the pixel ROC AUC and PR AUC (average precision) of the
    residual maps against the outlines; the Dice overlap of the pixels above `pixel_threshold` with the
    outlines over all slices; and the mean over slices of each slice's best Dice at any threshold."""
    scored = maps > 0
    truth, values = outlines[scored], maps[scored]
    both = 0 < truth.sum() < truth.size
    return {
        "pixel_roc_auc": float(roc_auc_score(truth, values)) if both else np.nan,
        "pixel_pr_auc": float(average_precision_score(truth, values)) if both else np.nan,
        "dice": dice(maps, outlines, pixel_threshold),
        "slice_best_dice": float(np.mean([_best_dice(m, o) for m, o in zip(maps, outlines, strict=True)])),
    }


def dice(maps: np.ndarray, outlines: np.ndarray, pixel_threshold: float) -> float:
    """The Dice overlap of the pixels above `pixel_threshold` with the outlines, over all slices together."""
    flagged = maps > pixel_threshold
    return float(2 * np.sum(flagged & outlines) / max(int(flagged.sum() + outlines.sum()), 1))


@dataclass(frozen=True)
class PixelThreshold:
    """Where a residual-map pixel becomes anomalous: a percentile of the healthy validation slices'
    scored pixels, the configured one (`threshold.pixel_percentile`) or, under `threshold.pixel: auto`
    where every anomalous validation slice has a lesion outline, the candidate whose Dice with them is
    highest (`val_dice`; NaN without outlines)."""

    value: float
    percentile: float
    rule: str  # "percentile" or "dice_optimal"
    val_dice: float = math.nan


def choose_pixel_threshold(
    healthy_maps: np.ndarray,
    config: ThresholdConfig,
    lesion_maps: np.ndarray | None = None,
    outlines: np.ndarray | None = None,
) -> PixelThreshold:
    """The pixel threshold calibrate applies (`PixelThreshold`); candidates are healthy percentiles, so
    the threshold keeps its meaning (the share of healthy pixels flagged) whichever rule chose it."""
    scored = healthy_maps[healthy_maps > 0]
    configured = config.pixel_percentile
    candidates = sorted({*PIXEL_PERCENTILES, configured})
    at = dict(zip(candidates, np.percentile(scored, candidates).tolist(), strict=True))  # one sort
    outlined = lesion_maps is not None and outlines is not None
    if config.pixel == "percentile" or not outlined or not outlines.any():
        val_dice = dice(lesion_maps, outlines, at[configured]) if outlined else math.nan
        return PixelThreshold(at[configured], configured, "percentile", val_dice)
    by_percentile = {p: dice(lesion_maps, outlines, value) for p, value in at.items()}
    best = max(by_percentile, key=lambda p: (by_percentile[p], p == configured, p))  # ties: fewer pixels
    return PixelThreshold(at[best], best, "dice_optimal", by_percentile[best])


def _best_dice(residual: np.ndarray, outline: np.ndarray) -> float:
    """The highest Dice a threshold on this slice's map reaches: flagging its k highest scored pixels."""
    scored = residual > 0
    order = np.argsort(-residual[scored], kind="stable")
    hits = np.cumsum(outline[scored][order])
    flagged = np.arange(1, len(order) + 1)
    dice = 2 * hits / (flagged + outline.sum())
    return float(dice.max()) if len(dice) and outline.any() else 0.0


def pixel_intervals(
    maps: np.ndarray, outlines: np.ndarray, pixel_threshold: float, n_resamples: int, seed: int
) -> dict[str, float]:
    """95% bootstrap intervals of the pixel ROC AUC and the Dice, resampling whole slices (pixels of
    one slice are not independent). The AUC is computed from residual histograms, to the bins' width."""
    scored = maps > 0
    edges = np.linspace(0, max(float(maps.max()), 1e-12), AUC_BINS + 1)
    positive = np.stack(
        [np.histogram(m[s & o], edges)[0] for m, s, o in zip(maps, scored, outlines, strict=True)]
    )
    negative = np.stack(
        [np.histogram(m[s & ~o], edges)[0] for m, s, o in zip(maps, scored, outlines, strict=True)]
    )
    flagged = maps > pixel_threshold
    overlap, sizes = (
        (flagged & outlines).sum(axis=(1, 2)),
        flagged.sum(axis=(1, 2)) + outlines.sum(axis=(1, 2)),
    )
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(maps), np.full(len(maps), 1 / len(maps)), size=n_resamples)
    pos, neg = weights @ positive, weights @ negative
    below = np.cumsum(neg, axis=1) - neg  # negatives in lower bins
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((pos * below).sum(axis=1) + 0.5 * (pos * neg).sum(axis=1)) / pairs
        dice = 2 * (weights @ overlap) / np.maximum(weights @ sizes, 1)
    results = {}
    for name, values in (("pixel_roc_auc", auc), ("dice", dice)):
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, [2.5, 97.5]) if len(finite) else (np.nan, np.nan)
        results |= {f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)}
    return results
