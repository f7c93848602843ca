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

from pipeline.evaluation.metrics import (
    DetectionMetrics,
    _metrics_from_counts,
    bootstrap_intervals,
    detection_metrics,
    detection_rate,
    group_metrics,
    pr_curve_table,
    roc_curve_table,
    size_groups,
    strict_thresholds,
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


def test_strict_thresholds_flag_under_greater_than_what_sklearn_flags_under_greater_or_equal() -> None:
    scores = np.array([0.1, 0.5, 0.5, 0.9])
    inclusive = np.array([np.inf, 0.9, 0.5, 0.1])
    strict = strict_thresholds(inclusive, scores)
    assert strict[0] == 0.9  # sklearn's +inf (nothing flagged) becomes the highest score
    np.testing.assert_array_equal(
        scores[np.newaxis, :] > strict[:, np.newaxis], scores[np.newaxis, :] >= inclusive[:, np.newaxis]
    )


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
        (np.array([[0.1, 0.2]]), 0.1, "1-D"),
        (np.array([0.1, np.nan]), 0.1, "finite"),
        (np.array([0.1]), float("inf"), "threshold must be finite"),
    ],
)
def test_detection_rate_bad_inputs_raise(scores: np.ndarray, threshold: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detection_rate(scores, threshold)


CURVE_CASES = [random_case(10), random_case(11, decimals=2), random_case(12, size=20)]


@pytest.mark.parametrize(("labels", "scores"), CURVE_CASES)
def test_roc_table_is_finite_monotone_and_integrates_to_roc_auc(
    labels: np.ndarray, scores: np.ndarray
) -> None:
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
def test_pr_table_is_finite_monotone_and_sums_to_average_precision(
    labels: np.ndarray, scores: np.ndarray
) -> None:
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


BOOTSTRAP_METRICS = ["accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc"]


@pytest.mark.parametrize("seed", range(4))
def test_resampled_metrics_equal_detection_metrics_on_the_written_out_copy(seed: int) -> None:
    labels, scores = random_case(20 + seed, size=120, decimals=2 if seed % 2 else None)
    threshold = float(np.quantile(scores, 0.3 + 0.1 * seed))
    descending, inverse = np.unique(-scores, return_inverse=True)
    rng = np.random.default_rng(seed)
    multiplicities = rng.integers(0, 3, size=(5, scores.size))
    multiplicities[:, :2] = 1  # random_case puts one healthy and one tumor slice first
    multiplicities[0] = 1  # the data as it is
    healthy_counts = np.stack(
        [
            np.bincount(inverse, weights=row * (labels == 0), minlength=descending.size)
            for row in multiplicities
        ]
    )
    tumor_counts = np.stack(
        [
            np.bincount(inverse, weights=row * (labels == 1), minlength=descending.size)
            for row in multiplicities
        ]
    )
    resampled = _metrics_from_counts(healthy_counts, tumor_counts, -descending, threshold)
    assert list(resampled) == BOOTSTRAP_METRICS
    for row, weights in enumerate(multiplicities):
        copy = np.repeat(labels, weights), np.repeat(scores, weights)
        expected = detection_metrics(*copy, threshold).as_dict()
        for name in BOOTSTRAP_METRICS:
            assert resampled[name][row] == pytest.approx(expected[name], abs=1e-12), name


@pytest.mark.parametrize("seed", range(4))
def test_bootstrap_intervals_contain_the_point_estimate(seed: int) -> None:
    labels, scores = random_case(30 + seed, size=400, decimals=3 if seed % 2 else None)
    threshold = float(np.median(scores))
    intervals = bootstrap_intervals(labels, scores, threshold)
    point = detection_metrics(labels, scores, threshold).as_dict()
    assert list(intervals) == BOOTSTRAP_METRICS
    for name, (low, high) in intervals.items():
        assert type(low) is float and type(high) is float
        assert 0.0 <= low < point[name] < high <= 1.0, name


def test_bootstrap_intervals_are_deterministic_given_the_seed() -> None:
    labels, scores = random_case(40)
    threshold = float(np.median(scores))
    first = bootstrap_intervals(labels, scores, threshold, seed=3)
    assert bootstrap_intervals(labels, scores, threshold, seed=3) == first
    assert bootstrap_intervals(labels, scores, threshold, seed=4) != first


def test_bootstrap_intervals_narrow_with_more_data() -> None:
    small = random_case(41, size=100)
    large = random_case(41, size=1600)
    narrow = bootstrap_intervals(*large, threshold=0.025)
    wide = bootstrap_intervals(*small, threshold=0.025)
    for name in BOOTSTRAP_METRICS:
        assert narrow[name][1] - narrow[name][0] < wide[name][1] - wide[name][0], name


def test_bootstrap_intervals_narrow_with_lower_confidence() -> None:
    labels, scores = random_case(42)
    wide = bootstrap_intervals(labels, scores, 0.025, confidence=0.95)
    narrow = bootstrap_intervals(labels, scores, 0.025, confidence=0.5)
    for name in BOOTSTRAP_METRICS:
        assert wide[name][0] <= narrow[name][0] <= narrow[name][1] <= wide[name][1], name


def test_every_resample_keeps_both_classes() -> None:
    # Few tumors: unstratified resamples would often draw none and leave ROC AUC undefined.
    labels = np.array([0] * 30 + [1] * 2)
    scores = np.concatenate([np.linspace(0.0, 0.1, 30), [0.5, 0.6]])
    intervals = bootstrap_intervals(labels, scores, threshold=0.3, n_resamples=500)
    assert all(interval == (1.0, 1.0) for interval in intervals.values())


@pytest.mark.parametrize(
    ("labels", "scores", "threshold", "options", "message"),
    [
        (np.array([0, 0]), np.array([0.1, 0.2]), 0.1, {}, "both healthy"),
        (np.array([0, 1]), np.array([0.1, np.nan]), 0.1, {}, "finite"),
        (np.array([0, 1]), np.array([0.1, 0.2]), float("nan"), {}, "threshold must be finite"),
        (np.array([0, 1]), np.array([0.1, 0.2]), 0.1, {"n_resamples": 0}, "n_resamples"),
        (np.array([0, 1]), np.array([0.1, 0.2]), 0.1, {"confidence": 1.0}, "confidence"),
        (np.array([0, 1]), np.array([0.1, 0.2]), 0.1, {"confidence": 0.0}, "confidence"),
    ],
)
def test_bootstrap_bad_inputs_raise(
    labels: np.ndarray, scores: np.ndarray, threshold: float, options: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_intervals(labels, scores, threshold, **options)


GROUP_COLUMNS = [
    "group",
    "n_healthy",
    "n_tumor",
    "flagged_healthy",
    "flagged_tumor",
    "roc_auc",
    "mean_score_healthy",
    "mean_score_tumor",
]


def test_group_metrics_by_hand() -> None:
    # a: healthy 0.1, 0.5 and tumor 0.6; b: healthy 0.4 and tumors 0.2, 0.9; c: healthy only.
    groups = pd.Series(["b", "a", "c", "a", "b", "a", "c", "b"], index=range(10, 18))
    labels = np.array([0, 0, 0, 0, 1, 1, 0, 1])
    scores = np.array([0.4, 0.1, 0.1, 0.5, 0.2, 0.6, 0.2, 0.9])
    table = group_metrics(groups, labels, scores, threshold=0.3)
    expected = pd.DataFrame(
        {
            "group": ["a", "b", "c"],
            "n_healthy": [2, 1, 2],
            "n_tumor": [1, 2, 0],
            "flagged_healthy": [0.5, 1.0, 0.0],
            "flagged_tumor": [1.0, 0.5, np.nan],
            "roc_auc": [1.0, 0.5, np.nan],
            "mean_score_healthy": [0.3, 0.4, 0.15],
            "mean_score_tumor": [0.6, 0.55, np.nan],
        }
    )
    assert list(table.columns) == GROUP_COLUMNS
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)


def test_group_metrics_agree_with_whole_set_metrics_per_group() -> None:
    labels, scores = random_case(50, size=300)
    groups = np.random.default_rng(51).integers(0, 3, size=300)  # random_case's seed would reuse its stream
    threshold = float(np.median(scores))
    table = group_metrics(groups, labels, scores, threshold)
    assert table["group"].tolist() == [0, 1, 2]
    for row in table.itertuples():
        in_group = groups == row.group
        metrics = detection_metrics(labels[in_group], scores[in_group], threshold)
        assert row.flagged_tumor == pytest.approx(metrics.recall)
        assert row.flagged_healthy == pytest.approx(1 - metrics.specificity)
        assert row.roc_auc == pytest.approx(metrics.roc_auc)
        assert row.n_healthy + row.n_tumor == in_group.sum()


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (np.array(["a", "b"]), "one value per score"),
        (np.array([["a", "b", "c"]]), "one value per score"),
        (pd.Series(["a", None, "b"]), "missing"),
    ],
)
def test_group_metrics_bad_groups_raise(groups, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        group_metrics(groups, np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3]), 0.15)


def test_size_groups_pool_rare_sizes_into_other() -> None:
    widths = pd.Series([512, 512, 640, 640, 512, 300, 512], index=list("abcdefg"))
    heights = pd.Series([512, 512, 640, 640, 600, 300, 512], index=list("abcdefg"))
    sizes = size_groups(widths, heights, min_count=2)
    assert sizes.tolist() == ["512x512", "512x512", "640x640", "640x640", "other", "other", "512x512"]
    assert sizes.index.tolist() == list("abcdefg")


def test_size_groups_default_needs_twenty_images_and_keeps_non_square_sizes() -> None:
    widths = pd.Series([512.0] * 20 + [640.0] * 19 + [512.0] * 25)
    heights = pd.Series([512.0] * 20 + [640.0] * 19 + [400.0] * 25)
    counts = size_groups(widths, heights).value_counts().to_dict()
    assert counts == {"512x400": 25, "512x512": 20, "other": 19}


@pytest.mark.parametrize(
    ("widths", "heights", "min_count", "message"),
    [
        (pd.Series([512]), pd.Series([512, 512]), 1, "same length"),
        (pd.Series([512.0, np.nan]), pd.Series([512, 512]), 1, "missing"),
        (pd.Series([512]), pd.Series([512]), 0, "min_count"),
    ],
)
def test_size_groups_bad_inputs_raise(
    widths: pd.Series, heights: pd.Series, min_count: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        size_groups(widths, heights, min_count=min_count)
