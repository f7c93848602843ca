"""The shared input checks: what they accept, and the messages that name what they refuse."""

import numpy as np
import pytest

from pipeline.core.arrays import finite_1d, finite_number, labels_and_scores, require_both_classes


def test_finite_1d_gives_float64_and_accepts_lists() -> None:
    array = finite_1d([1, 2, 3], "scores")
    assert array.dtype == np.float64
    np.testing.assert_array_equal(array, [1.0, 2.0, 3.0])
    assert finite_1d(np.array([]), "scores", allow_empty=True).shape == (0,)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([]), r"errors must be a non-empty 1-D array, got shape \(0,\)"),
        (np.zeros((2, 2)), r"errors must be a non-empty 1-D array, got shape \(2, 2\)"),
        (np.array(0.5), r"errors must be a non-empty 1-D array, got shape \(\)"),
        (np.array([0.1, np.nan, np.inf]), r"errors must be finite; got 2 NaN or infinite value\(s\)"),
    ],
)
def test_finite_1d_refuses_with_the_name(values: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        finite_1d(values, "errors")


def test_finite_1d_allow_empty_still_wants_one_dimension() -> None:
    with pytest.raises(ValueError, match=r"tumor must be a 1-D array, got shape \(0, 3\)"):
        finite_1d(np.zeros((0, 3)), "tumor", allow_empty=True)


def test_finite_number() -> None:
    assert finite_number(np.float32(0.5)) == 0.5 and type(finite_number(np.float32(0.5))) is float
    with pytest.raises(ValueError, match="threshold must be finite, got nan"):
        finite_number(float("nan"))
    with pytest.raises(ValueError, match="k must be finite, got inf"):
        finite_number(float("inf"), "k")


def test_labels_and_scores_accepts_booleans_and_returns_int_labels() -> None:
    labels, scores = labels_and_scores(np.array([True, False]), [0.2, 0.1])
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0]
    assert scores.dtype == np.float64


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 1, 1], [0.1, 0.2], "same length"),
        ([[0, 1]], [0.1, 0.2], "same length"),
        ([0, 2], [0.1, 0.2], r"labels must be 0 \(healthy\) or 1 \(tumor\), got values \[0, 2\]"),
        ([0, 1], [0.1, np.nan], "scores must be finite"),
        ([], [], "scores must be a non-empty"),
    ],
)
def test_labels_and_scores_refuses(labels: list, scores: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        labels_and_scores(np.array(labels), np.array(scores))


def test_require_both_classes_names_what_needs_them() -> None:
    require_both_classes(np.array([0, 1, 1]), "ROC AUC")
    message = r"ROC AUC needs both healthy \(0\) and tumor \(1\) labels, but only \[1\] present"
    with pytest.raises(ValueError, match=message):
        require_both_classes(np.array([1, 1]), "ROC AUC")
