"""Decision thresholds for reconstruction-error anomaly scores.

The autoencoder only ever sees healthy slices, so the label-free thresholds (mean_std,
percentile) are set from the spread of healthy validation errors alone. The label-based
ones (f1_optimal, youden) use a labelled validation set and show how far the label-free
rules are from the best a threshold on these scores can do. Every threshold follows the
strict rule: a slice is flagged when its error is strictly greater than the threshold.
"""

from typing import get_args

import numpy as np
from sklearn.metrics import roc_curve

from pipeline.config import ThresholdConfig
from pipeline.metrics import _require_both_classes, _strict_thresholds, _validated_labels_and_scores

THRESHOLD_METHODS: tuple[str, ...] = get_args(ThresholdConfig.model_fields["method"].annotation)
LABEL_FREE = {"mean_std", "percentile"}


def _validated_errors(errors: np.ndarray) -> np.ndarray:
    """Healthy errors as flat float64; an empty or non-finite array has no meaningful spread."""
    values = np.asarray(errors, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("cannot calibrate a threshold from an empty array of errors")
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"errors must be finite; got {np.count_nonzero(~np.isfinite(values))} "
            "NaN or infinite value(s)"
        )
    return values


def mean_std_threshold(errors: np.ndarray, k: float = 1.0) -> float:
    """Return mean + k * std of healthy validation errors (population std, ddof=0).

    ddof=0 (numpy's default) matches the original method, so thresholds stay
    comparable with its published numbers.
    """
    values = _validated_errors(errors)
    if not np.isfinite(k):
        raise ValueError(f"k must be finite, got {k}")
    return float(values.mean() + k * values.std())


def percentile_threshold(healthy_errors: np.ndarray, q: float) -> float:
    """Return the q-th percentile of healthy validation errors (numpy's linear interpolation).

    Unlike mean + k * std it assumes no shape for the skewed error distribution: with
    q = 95 about 5 % of healthy validation slices are flagged (fewer where errors tie).
    """
    values = _validated_errors(healthy_errors)
    if not 0 < q <= 100:
        raise ValueError(f"percentile q must be in (0, 100], got {q}")
    return float(np.percentile(values, q))


def _candidate_counts(
    labels: np.ndarray, scores: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Strict ROC thresholds (highest first) with the true and false positives each flags.

    Counts are exact integers from the strict rule itself, so equal F1 or J values tie
    exactly and the tie-break towards the highest threshold is reliable.
    """
    labels, scores = _validated_labels_and_scores(labels, scores)
    _require_both_classes(labels, what)
    _, _, inclusive_thresholds = roc_curve(labels, scores, drop_intermediate=False)
    thresholds = _strict_thresholds(inclusive_thresholds, scores)
    tumor_scores = np.sort(scores[labels == 1])
    healthy_scores = np.sort(scores[labels == 0])
    true_positives = tumor_scores.size - np.searchsorted(tumor_scores, thresholds, side="right")
    false_positives = healthy_scores.size - np.searchsorted(healthy_scores, thresholds, side="right")
    return thresholds, true_positives, false_positives, tumor_scores.size, healthy_scores.size


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Return the strict ROC threshold with the highest F1; ties go to the highest threshold.

    F1 = 2 TP / (TP + FP + P) with P the number of tumor slices; the highest threshold
    among equals flags the fewest slices for the same F1.
    """
    thresholds, true_positives, false_positives, positives, _ = _candidate_counts(
        labels, scores, "the F1-optimal threshold"
    )
    f1 = 2 * true_positives / (true_positives + false_positives + positives)
    return float(thresholds[np.argmax(f1)])


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Return the strict ROC threshold with the highest Youden's J = TPR - FPR; ties go to the highest.

    J is compared as the integer TP * N - FP * P (J scaled by P * N > 0), so ties are exact.
    """
    thresholds, true_positives, false_positives, positives, negatives = _candidate_counts(
        labels, scores, "Youden's threshold"
    )
    scaled_j = true_positives * negatives - false_positives * positives
    return float(thresholds[np.argmax(scaled_j)])


def calibrate_thresholds(
    healthy: np.ndarray, tumor: np.ndarray, k: float, percentile: float
) -> dict[str, float]:
    """Every method's threshold from validation errors, keyed in THRESHOLD_METHODS order.

    The label-based methods score healthy (label 0) and tumor (label 1) errors together and
    are left out when `tumor` is empty, since there is nothing to trade sensitivity against.
    """
    thresholds = {
        "mean_std": mean_std_threshold(healthy, k=k),
        "percentile": percentile_threshold(healthy, percentile),
    }
    healthy_values = np.asarray(healthy, dtype=np.float64).ravel()
    tumor_values = np.asarray(tumor, dtype=np.float64).ravel()
    if tumor_values.size:
        labels = np.concatenate([np.zeros(healthy_values.size), np.ones(tumor_values.size)])
        scores = np.concatenate([healthy_values, tumor_values])
        thresholds["f1_optimal"] = f1_optimal_threshold(labels, scores)
        thresholds["youden"] = youden_threshold(labels, scores)
    return thresholds
