import math

import numpy as np
import pytest

from pipeline.thresholds import mean_std_threshold


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


def test_non_finite_k_raises() -> None:
    with pytest.raises(ValueError, match="k must be finite"):
        mean_std_threshold(np.array([0.1, 0.2]), k=float("nan"))
