"""Input checks shared by metrics, thresholds and plots, written once so that all refuse the same inputs
with the same words.

numpy and sklearn do not fail loudly on what breaks these computations: a NaN score or threshold
silently flags nothing, a label 2 is read as a third class, an empty or one-class set gives an undefined
ROC AUC. Each check raises ValueError with a message that names the offending input.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def finite_1d(values: ArrayLike, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """`values` as a 1-D float64 array with no NaN or infinity (callers that accept any shape ravel)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or (array.size == 0 and not allow_empty):
        raise ValueError(
            f"{name} must be a {'' if allow_empty else 'non-empty '}1-D array, got shape {array.shape}"
        )
    bad = np.count_nonzero(~np.isfinite(array))
    if bad:
        raise ValueError(f"{name} must be finite; got {bad} NaN or infinite value(s)")
    return array


def finite_number(value: float, name: str = "threshold") -> float:
    """`value` as a float; a NaN threshold would flag nothing, so no non-finite value passes."""
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def labels_and_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 0 (healthy) / 1 (tumor) and scores as finite float64, one label per score."""
    score_array = finite_1d(scores, "scores")
    label_array = np.asarray(labels)
    if label_array.shape != score_array.shape:
        raise ValueError(
            f"labels and scores must be 1-D arrays of the same length, got shapes "
            f"{label_array.shape} and {score_array.shape}"
        )
    if not np.all(np.isin(label_array, (0, 1))):
        values = np.unique(label_array).tolist()
        raise ValueError(f"labels must be 0 (healthy) or 1 (tumor), got values {values}")
    return label_array.astype(np.int64), score_array


def require_both_classes(labels: np.ndarray, what: str) -> None:
    """ROC and precision-recall summaries (and label-based thresholds) need both classes present."""
    present = np.unique(labels).tolist()
    if present != [0, 1]:
        raise ValueError(f"{what} needs both healthy (0) and tumor (1) labels, but only {present} present")
