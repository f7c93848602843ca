"""Detection metrics and curve tables for reconstruction-error anomaly scores.

Conventions: label 1 = tumor (anomaly, positive), 0 = healthy; score = reconstruction
error, higher = more anomalous; a slice is flagged when score > threshold (strictly).
"""

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from pipeline.core.arrays import finite_1d, finite_number, labels_and_scores, require_both_classes


@dataclass(frozen=True)
class DetectionMetrics:
    """Threshold-dependent counts and rates plus threshold-free ranking quality."""

    accuracy: float
    precision: float
    recall: float
    specificity: float
    f1: float
    roc_auc: float
    pr_auc: float
    tn: int
    fp: int
    fn: int
    tp: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain-Python values, ready for MLflow log_metrics or a JSON metrics file."""
        return asdict(self)


def strict_thresholds(inclusive_thresholds: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Convert sklearn's 'score >= t' thresholds to the project's 'score > t' rule.

    The next float below t flags exactly the same scores under '>' as t does under '>=';
    sklearn's +inf ('nothing flagged') becomes the highest score, which also flags nothing.
    """
    strict = np.nextafter(inclusive_thresholds, -np.inf)
    strict[np.isinf(inclusive_thresholds)] = scores.max()
    return strict


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Threshold-free quality of the scores' ranking: ROC AUC and average precision (PR AUC)."""
    labels, scores = labels_and_scores(labels, scores)
    require_both_classes(labels, "ROC AUC and average precision")
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "pr_auc": float(average_precision_score(labels, scores)),
    }


def detection_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> DetectionMetrics:
    """Score a labelled set (both classes required) at one threshold.

    Precision and F1 are 0 where undefined (nothing flagged) instead of warning.
    """
    ranking = ranking_metrics(labels, scores)
    labels, scores = labels_and_scores(labels, scores)
    predictions = (scores > finite_number(threshold)).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(labels, predictions, labels=[0, 1]).ravel()
    return DetectionMetrics(
        accuracy=float(accuracy_score(labels, predictions)),
        precision=float(precision_score(labels, predictions, zero_division=0)),
        recall=float(recall_score(labels, predictions)),
        specificity=float(recall_score(labels, predictions, pos_label=0)),
        f1=float(f1_score(labels, predictions, zero_division=0)),
        **ranking,
        tn=int(tn),
        fp=int(fp),
        fn=int(fn),
        tp=int(tp),
    )


def roc_curve_table(labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """ROC points (columns fpr, tpr, threshold) for `dvc plots`, from nothing to everything flagged.

    Each threshold is finite and follows the strict rule: passing it to detection_metrics
    reproduces that row's fpr and tpr. sklearn's leading +inf is replaced by the highest
    score (nothing is greater, so nothing is flagged), not dropped, so the curve starts at (0, 0).
    """
    labels, scores = labels_and_scores(labels, scores)
    require_both_classes(labels, "ROC curve")
    false_positive_rate, true_positive_rate, inclusive_thresholds = roc_curve(labels, scores)
    return pd.DataFrame(
        {
            "fpr": false_positive_rate,
            "tpr": true_positive_rate,
            "threshold": strict_thresholds(inclusive_thresholds, scores),
        }
    )


def pr_curve_table(labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Precision-recall points (columns recall, precision, threshold), recall increasing.

    Thresholds are finite and follow the strict rule, as in roc_curve_table. The first row
    is sklearn's conventional end point (recall 0, precision 1), given the highest score as
    threshold (nothing flagged); detection_metrics reports precision 0 there (zero_division=0).
    """
    labels, scores = labels_and_scores(labels, scores)
    require_both_classes(labels, "precision-recall curve")
    precision, recall, inclusive_thresholds = precision_recall_curve(labels, scores)
    thresholds = np.append(strict_thresholds(inclusive_thresholds, scores), scores.max())
    return pd.DataFrame({"recall": recall[::-1], "precision": precision[::-1], "threshold": thresholds[::-1]})


def detection_rate(scores: np.ndarray, threshold: float) -> float:
    """Share of scores flagged (score > threshold): the recall on a tumor-only set."""
    return float(np.mean(finite_1d(scores, "scores") > finite_number(threshold)))


def _metrics_from_counts(
    healthy_counts: np.ndarray, tumor_counts: np.ndarray, distinct_scores: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Detection metrics for many weighted copies of one labelled set at once.

    Row b of healthy_counts / tumor_counts says how often each value of distinct_scores
    (sorted descending) occurs among the healthy / tumor slices of copy b; every row needs
    both classes. Each metric equals detection_metrics on that copy written out: precision
    is 0 when nothing is flagged, ROC AUC counts ties as half, and average precision steps
    over distinct scores as sklearn's does.
    """
    negatives = healthy_counts.sum(axis=1)
    positives = tumor_counts.sum(axis=1)
    flagged = distinct_scores > threshold
    true_positives = tumor_counts[:, flagged].sum(axis=1)
    false_positives = healthy_counts[:, flagged].sum(axis=1)
    predicted = true_positives + false_positives
    # Cumulative counts at or above each distinct score, i.e. at each inclusive ROC threshold.
    cumulative_tp = np.cumsum(tumor_counts, axis=1)
    cumulative_fp = np.cumsum(healthy_counts, axis=1)
    cumulative_flagged = cumulative_tp + cumulative_fp
    precision_at = np.divide(
        cumulative_tp, cumulative_flagged, out=np.zeros(cumulative_tp.shape), where=cumulative_flagged > 0
    )
    healthy_below = negatives[:, np.newaxis] - cumulative_fp
    pairs_ranked_right = (tumor_counts * (healthy_below + 0.5 * healthy_counts)).sum(axis=1)
    return {
        "accuracy": (true_positives + negatives - false_positives) / (positives + negatives),
        "precision": np.divide(
            true_positives, predicted, out=np.zeros(true_positives.shape), where=predicted > 0
        ),
        "recall": true_positives / positives,
        "specificity": (negatives - false_positives) / negatives,
        "f1": 2 * true_positives / (predicted + positives),
        "roc_auc": pairs_ranked_right / (positives * negatives),
        "pr_auc": (tumor_counts * precision_at).sum(axis=1) / positives,
    }


def _resampled_counts(
    rng: np.random.Generator, positions: np.ndarray, n_resamples: int, distinct_count: int
) -> np.ndarray:
    """Resample one class with replacement to its own size, n_resamples times.

    positions index each slice's score in the distinct scores; the result counts how often
    each distinct score was drawn, shape (n_resamples, distinct_count).
    """
    draws = positions[rng.integers(0, positions.size, size=(n_resamples, positions.size))]
    offsets = np.arange(n_resamples)[:, np.newaxis] * distinct_count
    flat = np.bincount((draws + offsets).ravel(), minlength=n_resamples * distinct_count)
    return flat.reshape(n_resamples, distinct_count)


def bootstrap_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap confidence intervals of the detection metrics at a fixed threshold.

    Healthy and tumor slices are resampled separately, each to its own size, so every
    resample has both classes and the class balance of the test set. Only the counts of
    each distinct score per resample are needed, so all resamples are scored at once.
    The threshold stays fixed: the interval reflects test-set sampling, not calibration.
    """
    labels, scores = labels_and_scores(labels, scores)
    require_both_classes(labels, "bootstrap intervals")
    threshold = finite_number(threshold)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    descending_scores, inverse = np.unique(-scores, return_inverse=True)
    distinct_scores = -descending_scores
    rng = np.random.default_rng(seed)
    healthy_counts = _resampled_counts(rng, inverse[labels == 0], n_resamples, distinct_scores.size)
    tumor_counts = _resampled_counts(rng, inverse[labels == 1], n_resamples, distinct_scores.size)
    resampled = _metrics_from_counts(healthy_counts, tumor_counts, distinct_scores, threshold)
    tail = (1 - confidence) / 2
    intervals = {}
    for name, values in resampled.items():
        low, high = np.quantile(values, [tail, 1 - tail])
        intervals[name] = (float(low), float(high))
    return intervals


def group_metrics(
    groups: pd.Series | np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float
) -> pd.DataFrame:
    """Per-group detection summary, one row per group value (sorted), matched to labels by position.

    A detector that keys on image source (format, size) rather than anatomy shows up as
    groups whose healthy slices are flagged far more or less often than the rest.
    flagged_healthy is the false-positive rate, flagged_tumor the sensitivity; roc_auc is
    NaN for a one-class group, and a class mean or rate is NaN where the class is absent.
    """
    labels, scores = labels_and_scores(labels, scores)
    threshold = finite_number(threshold)
    group_array = np.asarray(groups)
    if group_array.shape != labels.shape:
        raise ValueError(
            f"groups must be 1-D with one value per score, got shape {group_array.shape} "
            f"for {labels.size} scores"
        )
    group_values = pd.Series(group_array)
    if group_values.isna().any():
        missing = int(group_values.isna().sum())
        raise ValueError(f"groups has {missing} missing value(s); name them explicitly")
    frame = pd.DataFrame(
        {"group": group_values, "label": labels, "score": scores, "flagged": scores > threshold}
    )
    rows = []
    for group, part in frame.groupby("group", sort=True):
        healthy = part[part["label"] == 0]
        tumor = part[part["label"] == 1]
        both_classes = len(healthy) > 0 and len(tumor) > 0
        rows.append(
            {
                "group": group,
                "n_healthy": len(healthy),
                "n_tumor": len(tumor),
                "flagged_healthy": healthy["flagged"].mean(),
                "flagged_tumor": tumor["flagged"].mean(),
                "roc_auc": float(roc_auc_score(part["label"], part["score"])) if both_classes else np.nan,
                "mean_score_healthy": healthy["score"].mean(),
                "mean_score_tumor": tumor["score"].mean(),
            }
        )
    return pd.DataFrame(rows)


def size_groups(widths: pd.Series, heights: pd.Series, min_count: int = 20) -> pd.Series:
    """Label each image "WxH" where that exact size occurs at least min_count times, else "other".

    Rare sizes are pooled so group_metrics compares groups large enough to mean something.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    if len(widths) != len(heights):
        raise ValueError(
            f"widths and heights must have the same length, got {len(widths)} and {len(heights)}"
        )
    if widths.isna().any() or heights.isna().any():
        raise ValueError("widths and heights must not contain missing values")
    heights_text = heights.astype(np.int64).astype(str).to_numpy()
    sizes = widths.astype(np.int64).astype(str).str.cat(heights_text, sep="x")
    frequent = sizes.map(sizes.value_counts()) >= min_count
    return sizes.where(frequent, "other").rename("size_group")
