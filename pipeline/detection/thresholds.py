"""Decision thresholds for reconstruction-error anomaly scores.

The autoencoder only ever sees healthy slices, so the label-free thresholds (mean_std,
percentile) are set from the spread of healthy validation errors alone. The label-based
ones (f1_optimal, youden) use a labelled validation set and show how far the label-free
rules are from the best a threshold on these scores can do. Every threshold follows the
strict rule: a slice is flagged when its error is strictly greater than the threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_curve

from pipeline.core.arrays import finite_1d, finite_number, labels_and_scores, require_both_classes
from pipeline.core.config import ThresholdConfig
from pipeline.core.registry import Registry
from pipeline.evaluation.metrics import strict_thresholds


@dataclass(frozen=True)
class ThresholdRule:
    """How a `threshold.method` sets its threshold from (healthy, tumor, config); a rule that
    `needs_tumors` is label-based and is skipped when the validation set has no tumor slices."""

    compute: Callable[[np.ndarray, np.ndarray, ThresholdConfig], float]
    needs_tumors: bool


THRESHOLD_RULES: Registry[ThresholdRule] = Registry("threshold rule", "threshold.method")


def _flat_errors(errors: ArrayLike) -> np.ndarray:
    """Healthy errors of any shape, flattened; an empty or non-finite array has no meaningful spread."""
    return finite_1d(np.ravel(errors), "errors")


def mean_std_threshold(errors: np.ndarray, k: float = 1.0) -> float:
    """Return mean + k * std of healthy validation errors (population std, ddof=0).

    ddof=0 (numpy's default) matches the original method, so thresholds stay
    comparable with its published numbers.
    """
    values = _flat_errors(errors)
    k = finite_number(k, "k")
    return float(values.mean() + k * values.std())


def percentile_threshold(healthy_errors: np.ndarray, q: float) -> float:
    """Return the q-th percentile of healthy validation errors (numpy's linear interpolation).

    Unlike mean + k * std it assumes no shape for the skewed error distribution: with
    q = 95 about 5 % of healthy validation slices are flagged (fewer where errors tie).
    """
    values = _flat_errors(healthy_errors)
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
    labels, scores = labels_and_scores(labels, scores)
    require_both_classes(labels, what)
    _, _, inclusive_thresholds = roc_curve(labels, scores, drop_intermediate=False)
    thresholds = strict_thresholds(inclusive_thresholds, scores)
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


def _labelled(healthy: np.ndarray, tumor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Healthy (label 0) and tumor (label 1) errors as one labelled set, for the label-based rules."""
    healthy_values = np.asarray(healthy, dtype=np.float64).ravel()
    tumor_values = np.asarray(tumor, dtype=np.float64).ravel()
    labels = np.concatenate([np.zeros(healthy_values.size), np.ones(tumor_values.size)])
    return labels, np.concatenate([healthy_values, tumor_values])


THRESHOLD_RULES.register("mean_std")(
    ThresholdRule(lambda healthy, _tumor, config: mean_std_threshold(healthy, k=config.k), needs_tumors=False)
)
THRESHOLD_RULES.register("percentile")(
    ThresholdRule(
        lambda healthy, _tumor, config: percentile_threshold(healthy, config.percentile), needs_tumors=False
    )
)
THRESHOLD_RULES.register("f1_optimal")(
    ThresholdRule(
        lambda healthy, tumor, _config: f1_optimal_threshold(*_labelled(healthy, tumor)), needs_tumors=True
    )
)
THRESHOLD_RULES.register("youden")(
    ThresholdRule(
        lambda healthy, tumor, _config: youden_threshold(*_labelled(healthy, tumor)), needs_tumors=True
    )
)


def label_free() -> list[str]:
    """The rules that need no tumor slices (sorted): the only ones usable on a healthy-only validation set."""
    return [name for name, rule in sorted(THRESHOLD_RULES.items()) if not rule.needs_tumors]


def calibrate_thresholds(healthy: ArrayLike, tumor: ArrayLike, config: ThresholdConfig) -> dict[str, float]:
    """Every applicable rule's threshold from validation errors, in registration order.

    The label-based rules score healthy (label 0) and tumor (label 1) errors together and are left
    out when `tumor` is empty, since there is nothing to trade sensitivity against.
    """
    tumor = finite_1d(np.ravel(tumor), "tumor errors", allow_empty=True)
    return {
        name: rule.compute(np.asarray(healthy), tumor, config)
        for name, rule in THRESHOLD_RULES.items()
        if tumor.size or not rule.needs_tumors
    }
