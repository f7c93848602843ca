import math

import numpy as np
import pytest

from pipeline.core.config import ThresholdConfig
from pipeline.core.errors import ConfigError
from pipeline.detection.thresholds import (
    THRESHOLD_RULES,
    calibrate_thresholds,
    f1_optimal_threshold,
    label_free,
    mean_std_threshold,
    percentile_threshold,
    youden_threshold,
)
from pipeline.evaluation.metrics import detection_metrics


def _config(k: float = 1.0, percentile: float = 95.0) -> ThresholdConfig:
    return ThresholdConfig(method="mean_std", k=k, percentile=percentile, pixel="auto", pixel_percentile=99.5)


def test_known_numbers_use_population_std() -> None:
    # mean 2.5, population variance 1.25 (sample variance would be 1.666...)
    assert mean_std_threshold(np.array([1.0, 2.0, 3.0, 4.0]), k=1.0) == pytest.approx(2.5 + math.sqrt(1.25))
    assert mean_std_threshold(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(3.6180339887)


def test_k_zero_gives_the_mean() -> None:
    assert mean_std_threshold(np.array([1.0, 2.0, 3.0, 4.0]), k=0.0) == pytest.approx(2.5)


@pytest.mark.parametrize("k", [0.5, 1.0, 2.5, -1.0])
def test_matches_numpy_on_random_errors(k: float) -> None:
    errors = np.random.default_rng(7).gamma(2.0, 0.01, size=500).astype(np.float32)
    expected = errors.astype(np.float64).mean() + k * errors.astype(np.float64).std()
    assert mean_std_threshold(errors, k=k) == pytest.approx(expected, rel=1e-12)


def test_returns_plain_float_and_accepts_lists() -> None:
    threshold = mean_std_threshold([0.1, 0.2, 0.3])
    assert type(threshold) is float


def test_single_error_gives_that_error() -> None:
    assert mean_std_threshold(np.array([0.25]), k=3.0) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("errors", "message"),
    [
        (np.array([]), "empty"),
        (np.array([0.1, np.nan]), "finite"),
        (np.array([0.1, np.inf]), "finite"),
    ],
)
def test_bad_errors_raise(errors: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mean_std_threshold(errors)
    with pytest.raises(ValueError, match=message):
        percentile_threshold(errors, 95.0)


def test_non_finite_k_raises() -> None:
    with pytest.raises(ValueError, match="k must be finite"):
        mean_std_threshold(np.array([0.1, 0.2]), k=float("nan"))


@pytest.mark.parametrize("q", [0.5, 50.0, 90.0, 95.0, 99.0, 100.0])
def test_percentile_matches_numpy(q: float) -> None:
    errors = np.random.default_rng(3).gamma(2.0, 0.01, size=(40, 10)).astype(np.float32)
    threshold = percentile_threshold(errors, q)
    assert type(threshold) is float
    assert threshold == pytest.approx(np.percentile(errors.astype(np.float64), q), rel=1e-12)


def test_percentile_by_hand_interpolates_linearly() -> None:
    assert percentile_threshold([1.0, 2.0, 3.0, 4.0], 50.0) == pytest.approx(2.5)
    assert percentile_threshold([1.0, 2.0, 3.0, 4.0], 100.0) == 4.0


@pytest.mark.parametrize("q", [0.0, -5.0, 100.5, float("nan")])
def test_percentile_out_of_range_raises(q: float) -> None:
    with pytest.raises(ValueError, match="percentile q must be in"):
        percentile_threshold(np.array([0.1, 0.2]), q)


# Ranked from the highest score down, the labels are 1 1 0 1 0 0: flagging the top k gives
# F1 = 2 TP / (k + 3): 0, 2/4, 4/5, 4/6, 6/7, 6/8, 6/9, best at k = 4 (scores down to 0.3), and
# J = TP/3 - FP/3: 0, 1/3, 2/3, 1/3, 2/3, 1/3, 0, tied at k = 2 and k = 4, so the higher one (k = 2).
HAND_LABELS = np.array([0, 0, 1, 0, 1, 1])
HAND_SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


def test_f1_optimal_by_hand() -> None:
    threshold = f1_optimal_threshold(HAND_LABELS, HAND_SCORES)
    assert threshold == np.nextafter(0.3, -np.inf)
    metrics = detection_metrics(HAND_LABELS, HAND_SCORES, threshold)
    assert (metrics.tp, metrics.fp) == (3, 1)
    assert metrics.f1 == pytest.approx(6 / 7)


def test_youden_by_hand_breaks_the_tie_towards_the_higher_threshold() -> None:
    threshold = youden_threshold(HAND_LABELS, HAND_SCORES)
    assert threshold == np.nextafter(0.5, -np.inf)
    metrics = detection_metrics(HAND_LABELS, HAND_SCORES, threshold)
    assert (metrics.tp, metrics.fp) == (2, 0)


def test_f1_optimal_by_hand_breaks_the_tie_towards_the_higher_threshold() -> None:
    # Ranked labels 1 1 0 0 1 0 0 0 1 (P = 4): F1 = 2/3 after 2 flags (4/6) and after 5 flags (6/9).
    scores = np.arange(9, 0, -1) / 10
    labels = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1])
    assert f1_optimal_threshold(labels, scores) == np.nextafter(0.8, -np.inf)


def test_tied_scores_across_classes_are_flagged_together() -> None:
    # The only way to catch the tumor at 0.5 also flags the healthy slice tied with it.
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.5, 0.5, 0.9])
    assert f1_optimal_threshold(labels, scores) == np.nextafter(0.5, -np.inf)  # F1 4/5 beats 2/3
    # J is 1/2 both for flagging 0.9 alone and for flagging the 0.5s too: the tie keeps fewer flags.
    assert youden_threshold(labels, scores) == np.nextafter(0.9, -np.inf)


def test_perfect_separation_puts_the_threshold_just_below_the_lowest_tumor() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.7, 0.8])
    for method in (f1_optimal_threshold, youden_threshold):
        assert method(labels, scores) == np.nextafter(0.7, -np.inf)


def brute_force_best(labels: np.ndarray, scores: np.ndarray) -> dict[str, tuple[float, int]]:
    """Best F1 and J over every distinct flag set, and the fewest flags that reach each."""
    candidates = np.append(np.unique(scores), scores.min() - 1.0)
    flagged = scores[np.newaxis, :] > candidates[:, np.newaxis]
    true_positives = (flagged & (labels == 1)).sum(axis=1)
    false_positives = (flagged & (labels == 0)).sum(axis=1)
    positives, negatives = (labels == 1).sum(), (labels == 0).sum()
    values = {
        "f1": 2 * true_positives / (true_positives + false_positives + positives),
        "j": true_positives / positives - false_positives / negatives,
    }
    best = {}
    for name, value in values.items():
        reaching = value >= value.max() - 1e-12
        best[name] = (float(value.max()), int(flagged.sum(axis=1)[reaching].min()))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_label_based_thresholds_reach_the_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=200)
    labels[:2] = [0, 1]
    scores = rng.normal(loc=0.02 + 0.01 * labels, scale=0.01, size=200)
    if seed % 2:
        scores = np.round(scores, 3)  # ties, also across classes
    best = brute_force_best(labels, scores)
    for name, method, value in [
        ("f1", f1_optimal_threshold, lambda metrics: metrics.f1),
        ("j", youden_threshold, lambda metrics: metrics.recall + metrics.specificity - 1),
    ]:
        threshold = method(labels, scores)
        assert type(threshold) is float
        best_value, fewest_flags = best[name]
        assert value(detection_metrics(labels, scores, threshold)) == pytest.approx(best_value, abs=1e-12)
        assert np.count_nonzero(scores > threshold) == fewest_flags


@pytest.mark.parametrize("method", [f1_optimal_threshold, youden_threshold])
@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        (np.array([0, 0]), np.array([0.1, 0.2]), "both healthy"),
        (np.array([1, 1]), np.array([0.1, 0.2]), "both healthy"),
        (np.array([0, 1]), np.array([0.1, np.nan]), "finite"),
        (np.array([0, 1, 1]), np.array([0.1, 0.2]), "same length"),
    ],
)
def test_label_based_bad_inputs_raise(method, labels: np.ndarray, scores: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        method(labels, scores)


def test_registry_names_split_into_label_free_and_label_based() -> None:
    assert THRESHOLD_RULES.names() == ["f1_optimal", "mean_std", "percentile", "youden"]
    assert label_free() == ["mean_std", "percentile"]
    assert [name for name, rule in THRESHOLD_RULES.items() if rule.needs_tumors] == ["f1_optimal", "youden"]


def test_unknown_rule_is_a_config_error_listing_the_registered_ones() -> None:
    with pytest.raises(ConfigError) as error:
        THRESHOLD_RULES.get("otsu")
    assert str(error.value) == (
        "threshold.method: unknown threshold rule 'otsu' "
        "(available: f1_optimal, mean_std, percentile, youden)"
    )


def test_each_rule_reads_its_own_setting() -> None:
    healthy = np.array([1.0, 2.0, 3.0, 4.0])
    tumor = np.array([5.0])
    config = _config(k=0.0, percentile=50.0)
    assert THRESHOLD_RULES.get("mean_std").compute(healthy, tumor, config) == pytest.approx(2.5)
    assert THRESHOLD_RULES.get("percentile").compute(healthy, tumor, config) == pytest.approx(2.5)
    assert THRESHOLD_RULES.get("youden").compute(healthy, tumor, config) == np.nextafter(5.0, -np.inf)


def test_calibrate_thresholds_with_tumor_errors_gives_every_rule() -> None:
    rng = np.random.default_rng(5)
    healthy = rng.gamma(2.0, 0.01, size=150).astype(np.float32)
    tumor = rng.gamma(3.0, 0.01, size=50).astype(np.float32)
    thresholds = calibrate_thresholds(healthy, tumor, _config(k=2.0, percentile=95.0))
    assert list(thresholds) == ["mean_std", "percentile", "f1_optimal", "youden"]  # registration order
    assert all(type(value) is float for value in thresholds.values())
    labels = np.concatenate([np.zeros(healthy.size, dtype=int), np.ones(tumor.size, dtype=int)])
    scores = np.concatenate([healthy, tumor])
    assert thresholds == {
        "mean_std": mean_std_threshold(healthy, k=2.0),
        "percentile": percentile_threshold(healthy, 95.0),
        "f1_optimal": f1_optimal_threshold(labels, scores),
        "youden": youden_threshold(labels, scores),
    }


@pytest.mark.parametrize("tumor", [np.array([]), []])
def test_calibrate_thresholds_without_tumor_errors_leaves_out_the_rules_that_need_them(tumor) -> None:
    healthy = np.array([1.0, 2.0, 3.0, 4.0])
    thresholds = calibrate_thresholds(healthy, tumor, _config(k=1.0, percentile=50.0))
    assert list(thresholds) == label_free()
    assert thresholds == {"mean_std": pytest.approx(2.5 + math.sqrt(1.25)), "percentile": pytest.approx(2.5)}


def test_calibrate_thresholds_refuses_non_finite_tumor_errors() -> None:
    with pytest.raises(ValueError, match="tumor errors must be finite; got 1 NaN"):
        calibrate_thresholds(np.array([0.1, 0.2]), np.array([0.3, np.nan]), _config())
