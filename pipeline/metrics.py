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


def _validated_labels_and_scores(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return labels as int64 0/1 and scores as float64, rejecting inputs sklearn would misread."""
    label_array = np.asarray(labels)
    score_array = np.asarray(scores, dtype=np.float64)
    if label_array.ndim != 1 or score_array.ndim != 1:
        raise ValueError(
            f"labels and scores must be 1-D, got shapes {label_array.shape} and {score_array.shape}"
        )
    if label_array.shape != score_array.shape:
        raise ValueError(
            f"labels and scores must have the same length, got {label_array.size} and {score_array.size}"
        )
    if label_array.size == 0:
        raise ValueError("labels and scores are empty")
    if not np.all(np.isin(label_array, (0, 1))):
        raise ValueError(
            f"labels must be 0 (healthy) or 1 (tumor), got values {np.unique(label_array).tolist()}"
        )
    if not np.all(np.isfinite(score_array)):
        raise ValueError("scores must be finite (no NaN or infinite reconstruction errors)")
    return label_array.astype(np.int64), score_array


def _require_both_classes(labels: np.ndarray, what: str) -> None:
    """ROC and precision-recall summaries are undefined unless both classes are present."""
    present = np.unique(labels).tolist()
    if present != [0, 1]:
        raise ValueError(
            f"{what} needs both healthy (0) and tumor (1) labels, but only {present} present"
        )


def _validated_threshold(threshold: float) -> float:
    """A NaN threshold would silently flag nothing, so refuse any non-finite one."""
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    return float(threshold)


def _strict_thresholds(inclusive_thresholds: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Convert sklearn's 'score >= t' thresholds to the project's 'score > t' rule.

    The next float below t flags exactly the same scores under '>' as t does under '>=';
    sklearn's +inf ('nothing flagged') becomes the highest score, which also flags nothing.
    """
    strict = np.nextafter(inclusive_thresholds, -np.inf)
    strict[np.isinf(inclusive_thresholds)] = scores.max()
    return strict


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Threshold-free quality of the scores' ranking: ROC AUC and average precision (PR AUC)."""
    labels, scores = _validated_labels_and_scores(labels, scores)
    _require_both_classes(labels, "ROC AUC and average precision")
    return {"roc_auc": float(roc_auc_score(labels, scores)),
            "pr_auc": float(average_precision_score(labels, scores))}


def detection_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> DetectionMetrics:
    """Score a labelled set (both classes required) at one threshold.

    Precision and F1 are 0 where undefined (nothing flagged) instead of warning.
    """
    ranking = ranking_metrics(labels, scores)
    labels, scores = _validated_labels_and_scores(labels, scores)
    predictions = (scores > _validated_threshold(threshold)).astype(np.int64)
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
    labels, scores = _validated_labels_and_scores(labels, scores)
    _require_both_classes(labels, "ROC curve")
    false_positive_rate, true_positive_rate, inclusive_thresholds = roc_curve(labels, scores)
    return pd.DataFrame(
        {
            "fpr": false_positive_rate,
            "tpr": true_positive_rate,
            "threshold": _strict_thresholds(inclusive_thresholds, scores),
        }
    )


def pr_curve_table(labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Precision-recall points (columns recall, precision, threshold), recall increasing.

    Thresholds are finite and follow the strict rule, as in roc_curve_table. The first row
    is sklearn's conventional end point (recall 0, precision 1), given the highest score as
    threshold (nothing flagged); detection_metrics reports precision 0 there (zero_division=0).
    """
    labels, scores = _validated_labels_and_scores(labels, scores)
    _require_both_classes(labels, "precision-recall curve")
    precision, recall, inclusive_thresholds = precision_recall_curve(labels, scores)
    thresholds = np.append(_strict_thresholds(inclusive_thresholds, scores), scores.max())
    return pd.DataFrame(
        {"recall": recall[::-1], "precision": precision[::-1], "threshold": thresholds[::-1]}
    )


def detection_rate(scores: np.ndarray, threshold: float) -> float:
    """Share of scores flagged (score > threshold): the recall on a tumor-only set."""
    score_array = np.asarray(scores, dtype=np.float64)
    if score_array.ndim != 1 or score_array.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {score_array.shape}")
    if not np.all(np.isfinite(score_array)):
        raise ValueError("scores must be finite (no NaN or infinite reconstruction errors)")
    return float(np.mean(score_array > _validated_threshold(threshold)))
