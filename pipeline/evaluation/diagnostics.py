"""Where the detector fails: its results per level band of the scan and per lesion kind, and the
warnings a report should not hide.

On whole-head CT a reconstruction score depends on where the slice lies in its scan (the skull base
holds little brain and much bone, and scores high whatever it shows), and lesions along the skull or in
the sulci look like the anatomy beside them while those in the ventricles stand out. One ROC AUC over
the whole test set hides both. Here:

- `by_level`: per band of the slice's level in its scan (`LEVEL_EDGES`), the healthy and anomalous
  slices, their median scores, the band's own ROC AUC (its anomalous slices against its healthy ones),
  the recall and the false-positive rate at the applied threshold;
- `by_kind`: per lesion kind (the split's `kind` column: `epidural`, `subdural`, ...), its slices, the
  ROC AUC of its slices against all healthy test slices, the recall at the threshold and, where lesion
  outlines exist, the Dice overlap of the pixels above the pixel threshold with them;
- `failure_warnings`: a one-line message per failure a reader must see before any number (the
  validation ROC AUC below `MIN_VAL_ROC_AUC`; the slice's level alone beating the detector on test),
  keyed by its MLflow tag (`WARNING_TAGS`), and `warning_flags`, the same as 0/1 metrics.

Everything is a pure function of labels, scores and the split's rows: the stage (`pipeline.stages.evaluate`)
writes the tables, logs the metrics and sets the tags.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipeline.core.arrays import finite_number, labels_and_scores
from pipeline.evaluation.localization import dice

# A slice's level in its scan (0 lowest, 1 highest; `pipeline.evaluation.audit.levels`) falls in one band:
# [0, 0.2) skull base, [0.2, 0.3), [0.3, 0.5), [0.5, 0.7), [0.7, 0.9), [0.9, 1] skull top.
LEVEL_EDGES = (0.0, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
LEVEL_BANDS = tuple(zip(LEVEL_EDGES[:-1], LEVEL_EDGES[1:], strict=True))
KIND_COLUMN = "kind"  # the split's lesion kind per slice; empty for healthy or unknown
UNKNOWN_KIND = "unknown"  # the row of anomalous slices without a kind, where others have one
MIN_VAL_ROC_AUC = 0.7  # below it, the detector does not separate the classes of this data
SEPARATION_TAG = "warning.separation"
LEVEL_SHORTCUT_TAG = "warning.level_shortcut"
WARNING_TAGS = (SEPARATION_TAG, LEVEL_SHORTCUT_TAG)

BY_LEVEL_COLUMNS = [
    "band",
    "low",
    "high",
    "healthy",
    "anomalous",
    "median_healthy_score",
    "median_anomalous_score",
    "roc_auc",
    "recall",
    "false_positive_rate",
]
BY_KIND_COLUMNS = ["kind", "slices", "healthy", "median_score", "roc_auc", "recall", "dice"]
LEVEL_METRICS = ("roc_auc", "recall", "false_positive_rate")  # flat metrics per band
KIND_METRICS = ("roc_auc", "recall", "dice")  # flat metrics per kind


def band_name(low: float, high: float) -> str:
    """A band as people read it: `0.3-0.5`."""
    return f"{low:g}-{high:g}"


def band_key(low: float, high: float) -> str:
    """A band in a metric's name, in percent of the scan's height and without dots (DVC reads a dot in
    a metric's name as nesting): `level_30_50`."""
    return f"level_{round(low * 100)}_{round(high * 100)}"


def kind_key(kind: str) -> str:
    """A kind in a metric's name: lower case letters, digits and underscores (`kind_subdural`)."""
    return "kind_" + (re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or "other")


def level_bands(levels: np.ndarray) -> np.ndarray:
    """Each level's band, as an index into LEVEL_BANDS: [low, high), the last band [0.9, 1] closed."""
    return np.searchsorted(np.asarray(LEVEL_EDGES[1:-1]), np.asarray(levels, dtype=float), side="right")


def _roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, NaN unless both classes are there."""
    both = len(np.unique(labels)) == 2
    return float(roc_auc_score(labels, scores)) if both else float("nan")


def _share(flags: np.ndarray) -> float:
    """The share of True among `flags`; NaN for none."""
    return float(np.mean(flags)) if len(flags) else float("nan")


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def by_level(
    levels: np.ndarray | None, labels: np.ndarray, scores: np.ndarray, threshold: float
) -> pd.DataFrame:
    """One row per band of LEVEL_BANDS (every band, empty ones too); no rows when the slices have no
    level (lone 2D images). A band's ROC AUC ranks its anomalous slices against its own healthy ones
    (NaN where it lacks one class); recall and false-positive rate are at `threshold` (score > it)."""
    if levels is None:
        return pd.DataFrame(columns=BY_LEVEL_COLUMNS)
    labels, scores = labels_and_scores(labels, scores)
    threshold = finite_number(threshold)
    band = level_bands(levels)
    rows = []
    for index, (low, high) in enumerate(LEVEL_BANDS):
        inside = band == index
        healthy, anomalous = scores[inside & (labels == 0)], scores[inside & (labels == 1)]
        rows.append(
            {
                "band": band_name(low, high),
                "low": low,
                "high": high,
                "healthy": len(healthy),
                "anomalous": len(anomalous),
                "median_healthy_score": _median(healthy),
                "median_anomalous_score": _median(anomalous),
                "roc_auc": _roc_auc(labels[inside], scores[inside]),
                "recall": _share(anomalous > threshold),
                "false_positive_rate": _share(healthy > threshold),
            }
        )
    return pd.DataFrame(rows, columns=BY_LEVEL_COLUMNS)


def slice_kinds(frame: pd.DataFrame, labels: np.ndarray) -> np.ndarray | None:
    """Each anomalous slice's lesion kind (UNKNOWN_KIND where it has none), "" for healthy slices; None
    when `frame` (a split's rows) has no KIND_COLUMN or no anomalous slice has a kind."""
    if KIND_COLUMN not in frame:
        return None
    named = frame[KIND_COLUMN].fillna("").astype(str).str.strip().to_numpy()
    anomalous = np.asarray(labels) == 1
    if not (named[anomalous] != "").any():
        return None
    return np.where(anomalous, np.where(named != "", named, UNKNOWN_KIND), "")


def by_kind(
    kinds: np.ndarray | None,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    maps: np.ndarray | None = None,
    outlines: np.ndarray | None = None,
    pixel_threshold: float | None = None,
) -> pd.DataFrame:
    """One row per lesion kind (sorted), from `slice_kinds`; no rows when `kinds` is None. A kind's ROC
    AUC ranks its slices against all healthy test slices (NaN without healthy ones), its recall is at
    `threshold`. `maps` and `outlines` (the anomalous slices' residual maps and lesion outlines, in the
    order of the anomalous slices) give each kind's Dice at `pixel_threshold`; without them it is NaN."""
    if kinds is None:
        return pd.DataFrame(columns=BY_KIND_COLUMNS)
    labels, scores = labels_and_scores(labels, scores)
    threshold = finite_number(threshold)
    kinds = np.asarray(kinds, dtype=object)
    healthy = labels == 0
    anomalous_kinds = kinds[labels == 1]
    localised = maps is not None and outlines is not None and pixel_threshold is not None
    rows = []
    for kind in sorted(set(anomalous_kinds)):
        chosen = (labels == 1) & (kinds == kind)
        pooled = healthy | chosen
        rows.append(
            {
                "kind": kind,
                "slices": int(chosen.sum()),
                "healthy": int(healthy.sum()),
                "median_score": _median(scores[chosen]),
                "roc_auc": _roc_auc(labels[pooled], scores[pooled]),
                "recall": _share(scores[chosen] > threshold),
                "dice": dice(
                    maps[anomalous_kinds == kind], outlines[anomalous_kinds == kind], pixel_threshold
                )
                if localised
                else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=BY_KIND_COLUMNS)


def flat_metrics(level_table: pd.DataFrame, kind_table: pd.DataFrame) -> dict[str, float]:
    """The tables' key numbers as flat metrics (`level_30_50_roc_auc`, `kind_subdural_recall`, ...),
    valid as MLflow metric keys and DVC metrics; NaN ones (a band without one class) are left out."""
    results: dict[str, float] = {}
    for row in level_table.itertuples(index=False):
        prefix = band_key(row.low, row.high)
        results |= {f"{prefix}_{name}": float(getattr(row, name)) for name in LEVEL_METRICS}
    for row in kind_table.itertuples(index=False):
        prefix = kind_key(row.kind)
        results |= {f"{prefix}_{name}": float(getattr(row, name)) for name in KIND_METRICS}
    return {key: value for key, value in results.items() if np.isfinite(value)}


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, numbers.Real) and np.isfinite(float(value)) else None


def failure_warnings(results: Mapping[str, float], val_roc_auc: float | None) -> dict[str, str]:
    """The failures a report must show, as MLflow tag -> one-line message (empty when none):
    SEPARATION_TAG where the validation ROC AUC (calibrate's `val_roc_auc`; None when validation has
    no anomalies, and then not judged) is below MIN_VAL_ROC_AUC; LEVEL_SHORTCUT_TAG where the slice's
    level alone (the shortcut audit's `level_only_roc_auc`, for slices of scans) ranks the test slices
    better than the detector's score (`roc_auc`)."""
    warnings = {}
    validation = _finite(val_roc_auc)
    if validation is not None and validation < MIN_VAL_ROC_AUC:
        warnings[SEPARATION_TAG] = (
            f"this detector does not separate this data's classes "
            f"(validation ROC AUC {validation:.3f} < {MIN_VAL_ROC_AUC:.2f})"
        )
    level_only, detector = _finite(results.get("level_only_roc_auc")), _finite(results.get("roc_auc"))
    if level_only is not None and detector is not None and level_only > detector:
        warnings[LEVEL_SHORTCUT_TAG] = (
            f"the slice's level alone (ROC AUC {level_only:.3f}) beats the detector ({detector:.3f}) on "
            f"the test set: its scores follow where a slice lies in its scan more than the lesion "
            f"(see by_level.csv)"
        )
    return warnings


def warning_flags(warnings: Mapping[str, str]) -> dict[str, int]:
    """Each warning of WARNING_TAGS as a 0/1 metric (`warning_separation`, `warning_level_shortcut`),
    so `dvc metrics show` and MLflow's metric columns show it too."""
    return {tag.replace(".", "_"): int(tag in warnings) for tag in WARNING_TAGS}
