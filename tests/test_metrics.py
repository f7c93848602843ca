import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from pipeline.metrics import (
    DetectionMetrics,
    detection_metrics,
    detection_rate,
    pr_curve_table,
    roc_curve_table,
)

trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def random_case(seed: int, size: int = 300, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labelled errors where tumors score higher on average; rounding creates ties."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=size)
    labels[:2] = [0, 1]
    scores = rng.normal(loc=0.02 + 0.01 * labels, scale=0.01, size=size)
    if decimals is not None:
        scores = np.round(scores, decimals)
    return labels, scores


def assert_matches_sklearn(labels: np.ndarray, scores: np.ndarray, threshold: float) -> None:
    predictions = (scores > threshold).astype(int)
    metrics = detection_metrics(labels, scores, threshold)
    tn, fp, fn, tp = confusion_matrix(labels, predictions, labels=[0, 1]).ravel()
    assert (metrics.tn, metrics.fp, metrics.fn, metrics.tp) == (tn, fp, fn, tp)
    assert metrics.accuracy == pytest.approx(accuracy_score(labels, predictions))
    assert metrics.precision == pytest.approx(precision_score(labels, predictions, zero_division=0))
    assert metrics.recall == pytest.approx(recall_score(labels, predictions))
    assert metrics.f1 == pytest.approx(f1_score(labels, predictions, zero_division=0))
    assert metrics.specificity == pytest.approx(tn / (tn + fp))
    assert metrics.roc_auc == pytest.approx(roc_auc_score(labels, scores))
    assert metrics.pr_auc == pytest.approx(average_precision_score(labels, scores))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("quantile", [0.1, 0.5, 0.9])
def test_random_cases_match_sklearn(seed: int, quantile: float) -> None:
    labels, scores = random_case(seed, decimals=3 if seed % 2 else None)
    assert_matches_sklearn(labels, scores, float(np.quantile(scores, quantile)))


def test_hand_made_case_with_tie_at_threshold_is_not_flagged() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.5, 0.5, 0.7, 0.9])
    metrics = detection_metrics(labels, scores, threshold=0.5)
    # Both 0.5 scores equal the threshold, so neither is flagged: the healthy one is a TN, the tumor one a FN.
    assert (metrics.tn, metrics.fp, metrics.fn, metrics.tp) == (3, 0, 1, 2)
    assert metrics.accuracy == pytest.approx(5 / 6)
    assert metrics.precision == pytest.approx(1.0)
    assert metrics.recall == pytest.approx(2 / 3)
    assert metrics.specificity == pytest.approx(1.0)
    assert metrics.f1 == pytest.approx(0.8)
    assert_matches_sklearn(labels, scores, 0.5)


def test_hand_made_case_just_below_tie_flags_both() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.5, 0.5, 0.7, 0.9])
    metrics = detection_metrics(labels, scores, threshold=np.nextafter(0.5, 0.0))
    assert (metrics.tn, metrics.fp, metrics.fn, metrics.tp) == (2, 1, 0, 3)
    assert metrics.specificity == pytest.approx(2 / 3)


def test_hand_made_ranking_summaries() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    metrics = detection_metrics(labels, scores, threshold=0.3)
    assert metrics.roc_auc == pytest.approx(0.75)
    assert metrics.pr_auc == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_nothing_flagged_gives_zero_precision_without_warning() -> None:
    labels, scores = random_case(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = detection_metrics(labels, scores, threshold=float(scores.max()))
    assert (metrics.fp, metrics.tp) == (0, 0)
    assert metrics.precision == 0.0
    assert metrics.f1 == 0.0
    assert metrics.recall == 0.0
    assert metrics.specificity == 1.0


def test_accepts_boolean_labels_and_float32_scores() -> None:
    labels, scores = random_case(3)
    threshold = float(np.median(scores))
    from_bool = detection_metrics(labels.astype(bool), scores.astype(np.float32), threshold)
    assert from_bool.roc_auc == pytest.approx(roc_auc_score(labels, scores.astype(np.float32)))


def test_as_dict_is_plain_json_ready_and_complete() -> None:
    labels, scores = random_case(1)
    metrics = detection_metrics(labels, scores, float(np.median(scores)))
    values = metrics.as_dict()
    assert list(values) == [field.name for field in dataclasses.fields(DetectionMetrics)]
    assert all(type(values[name]) is int for name in ("tn", "fp", "fn", "tp"))
    assert all(type(value) is float for name, value in values.items() if name not in ("tn", "fp", "fn", "tp"))
    assert json.loads(json.dumps(values)) == values


def test_metrics_are_frozen() -> None:
    labels, scores = random_case(1)
    metrics = detection_metrics(labels, scores, 0.02)
    with pytest.raises(dataclasses.FrozenInstanceError):
        metrics.recall = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("labels", "scores", "threshold", "message"),
    [
        (np.array([0, 1, 1]), np.array([0.1, 0.2]), 0.1, "same length"),
        (np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]), 0.1, "both healthy"),
        (np.array([0, 0]), np.array([0.1, 0.2]), 0.1, "both healthy"),
        (np.array([0, 2]), np.array([0.1, 0.2]), 0.1, "0 \\(healthy\\) or 1"),
        (np.array([0, 1]), np.array([0.1, np.nan]), 0.1, "finite"),
        (np.array([0, 1]), np.array([0.1, np.inf]), 0.1, "finite"),
        (np.array([0, 1]), np.array([0.1, 0.2]), float("nan"), "threshold must be finite"),
        (np.array([], dtype=int), np.array([]), 0.1, "empty"),
        (np.array([[0, 1]]), np.array([[0.1, 0.2]]), 0.1, "1-D"),
    ],
)
def test_bad_inputs_raise(labels: np.ndarray, scores: np.ndarray, threshold: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detection_metrics(labels, scores, threshold)


def test_detection_rate_by_hand_with_tie() -> None:
    assert detection_rate(np.array([0.1, 0.5, 0.9]), 0.5) == pytest.approx(1 / 3)
    assert detection_rate(np.array([0.1, 0.5, 0.9]), 0.0) == 1.0
    assert type(detection_rate(np.array([0.1]), 0.0)) is float


def test_detection_rate_equals_recall_on_the_tumor_slices() -> None:
    labels, scores = random_case(4)
    threshold = float(np.median(scores))
    assert detection_rate(scores[labels == 1], threshold) == pytest.approx(
        detection_metrics(labels, scores, threshold).recall
    )


@pytest.mark.parametrize(
    ("scores", "threshold", "message"),
    [
        (np.array([]), 0.1, "non-empty"),
        (np.array([0.1, np.nan]), 0.1, "finite"),
        (np.array([0.1]), float("inf"), "threshold must be finite"),
    ],
)
def test_detection_rate_bad_inputs_raise(scores: np.ndarray, threshold: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detection_rate(scores, threshold)


CURVE_CASES = [random_case(10), random_case(11, decimals=2), random_case(12, size=20)]


@pytest.mark.parametrize(("labels", "scores"), CURVE_CASES)
def test_roc_table_is_finite_monotone_and_integrates_to_roc_auc(labels: np.ndarray, scores: np.ndarray) -> None:
    table = roc_curve_table(labels, scores)
    assert list(table.columns) == ["fpr", "tpr", "threshold"]
    assert np.all(np.isfinite(table.to_numpy()))
    for column in ("fpr", "tpr"):
        assert table[column].between(0, 1).all()
        assert table[column].is_monotonic_increasing
    assert table["threshold"].is_monotonic_decreasing
    assert table.iloc[0][["fpr", "tpr"]].tolist() == [0.0, 0.0]
    assert table.iloc[-1][["fpr", "tpr"]].tolist() == [1.0, 1.0]
    assert trapezoid(table["tpr"], table["fpr"]) == pytest.approx(roc_auc_score(labels, scores))


@pytest.mark.parametrize(("labels", "scores"), CURVE_CASES)
def test_roc_table_thresholds_reproduce_their_points_under_strict_rule(
    labels: np.ndarray, scores: np.ndarray
) -> None:
    table = roc_curve_table(labels, scores)
    assert table["threshold"].iloc[0] == scores.max()
    tumor_rates = [detection_rate(scores[labels == 1], threshold) for threshold in table["threshold"]]
    healthy_rates = [detection_rate(scores[labels == 0], threshold) for threshold in table["threshold"]]
    np.testing.assert_allclose(tumor_rates, table["tpr"])
    np.testing.assert_allclose(healthy_rates, table["fpr"])
    middle = table.iloc[len(table) // 2]
    assert detection_metrics(labels, scores, middle.threshold).recall == pytest.approx(middle.tpr)


@pytest.mark.parametrize(("labels", "scores"), CURVE_CASES)
def test_pr_table_is_finite_monotone_and_sums_to_average_precision(labels: np.ndarray, scores: np.ndarray) -> None:
    table = pr_curve_table(labels, scores)
    assert list(table.columns) == ["recall", "precision", "threshold"]
    assert np.all(np.isfinite(table.to_numpy()))
    assert table["recall"].between(0, 1).all()
    assert table["precision"].between(0, 1).all()
    assert table["recall"].is_monotonic_increasing
    assert table["threshold"].is_monotonic_decreasing
    assert table.iloc[0][["recall", "precision"]].tolist() == [0.0, 1.0]
    assert table["recall"].iloc[-1] == 1.0
    recall_steps = np.diff(table["recall"].to_numpy())
    average_precision = np.sum(recall_steps * table["precision"].to_numpy()[1:])
    assert average_precision == pytest.approx(average_precision_score(labels, scores))


@pytest.mark.parametrize(("labels", "scores"), CURVE_CASES)
def test_pr_table_thresholds_reproduce_their_points_under_strict_rule(
    labels: np.ndarray, scores: np.ndarray
) -> None:
    table = pr_curve_table(labels, scores)
    flagged = scores[np.newaxis, :] > table["threshold"].to_numpy()[:, np.newaxis]
    true_positives = (flagged & (labels == 1)).sum(axis=1)
    # Row 0 is the conventional (recall 0, precision 1) end point: nothing is flagged there.
    assert flagged[0].sum() == 0
    np.testing.assert_allclose(true_positives / (labels == 1).sum(), table["recall"])
    np.testing.assert_allclose(true_positives[1:] / flagged[1:].sum(axis=1), table["precision"].iloc[1:])
    middle = table.iloc[len(table) // 2]
    assert detection_metrics(labels, scores, middle.threshold).precision == pytest.approx(middle.precision)


@pytest.mark.parametrize("make_table", [roc_curve_table, pr_curve_table])
def test_curve_tables_survive_a_csv_round_trip_without_infinities(make_table, tmp_path: Path) -> None:
    labels, scores = random_case(13)
    path = tmp_path / "curve.csv"
    make_table(labels, scores).to_csv(path, index=False)
    assert "inf" not in path.read_text()
    assert np.all(np.isfinite(pd.read_csv(path).to_numpy()))


@pytest.mark.parametrize("make_table", [roc_curve_table, pr_curve_table])
def test_curve_tables_need_both_classes(make_table) -> None:
    with pytest.raises(ValueError, match="both healthy"):
        make_table(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]))
