from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.evaluation.plots import (
    SAVE_DPI,
    confusion_figure,
    error_histogram,
    reconstruction_grid,
    roc_pr_figure,
    save_figure,
)


@pytest.fixture
def labelled_scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    scores = rng.normal(loc=0.02 + 0.01 * labels, scale=0.01)
    return labels, scores


def legend_texts(fig: Figure) -> list[str]:
    return [text.get_text() for ax in fig.axes if ax.get_legend() for text in ax.get_legend().get_texts()]


def test_error_histogram_overlays_groups_and_labels_the_threshold(
    labelled_scores: tuple[np.ndarray, np.ndarray],
) -> None:
    labels, scores = labelled_scores
    groups = {"healthy": scores[labels == 0], "tumor": scores[labels == 1]}
    fig = error_histogram(groups, 0.0312, "test errors")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_title() == "test errors"
    assert ax.get_xlabel() and ax.get_ylabel()
    assert legend_texts(fig) == ["healthy (n=100)", "tumor (n=100)", "threshold = 0.0312"]
    assert len(ax.containers) == 2
    bin_lefts = [[patch.get_x() for patch in container.patches] for container in ax.containers]
    assert bin_lefts[0] == bin_lefts[1]


def test_error_histogram_keeps_a_far_threshold_in_view() -> None:
    fig = error_histogram({"healthy": np.array([0.1, 0.2, 0.3])}, 5.0, "far threshold")
    low, high = fig.axes[0].get_xlim()
    assert low <= 0.1 and high >= 5.0


@pytest.mark.parametrize(
    ("errors", "threshold", "message"),
    [
        ({}, 0.1, "at least one"),
        ({"healthy": np.array([])}, 0.1, "empty"),
        ({"healthy": np.array([0.1, np.nan])}, 0.1, "NaN"),
        ({"healthy": np.array([0.1])}, float("nan"), "threshold"),
    ],
)
def test_error_histogram_bad_inputs_raise(errors: dict, threshold: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        error_histogram(errors, threshold, "bad")


def test_error_histogram_names_the_bad_group_and_flattens_the_others() -> None:
    with pytest.raises(ValueError, match=r"errors\['tumor'\] must be finite; got 1 NaN"):
        error_histogram({"healthy": np.array([[0.1, 0.2]]), "tumor": np.array([0.3, np.nan])}, 0.2, "bad")
    fig = error_histogram({"healthy": np.array([[0.1, 0.2], [0.3, 0.4]])}, 0.2, "2-D group")
    assert legend_texts(fig)[0] == "healthy (n=4)"


def test_roc_pr_figure_has_two_panels_with_summaries(labelled_scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = labelled_scores
    fig = roc_pr_figure(labels, scores)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    texts = legend_texts(fig)
    assert f"ROC (AUC = {roc_auc_score(labels, scores):.3f})" in texts
    assert f"precision-recall (AP = {average_precision_score(labels, scores):.3f})" in texts
    assert any(text.startswith("chance") for text in texts)


def test_roc_pr_figure_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both healthy"):
        roc_pr_figure(np.array([1, 1]), np.array([0.1, 0.2]))


def test_confusion_figure_annotates_counts_in_actual_by_predicted_layout() -> None:
    fig = confusion_figure(tn=180, fp=20, fn=50, tp=150)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    cell_texts = {
        (round(text.get_position()[1]), round(text.get_position()[0])): text.get_text() for text in ax.texts
    }
    assert cell_texts[(0, 0)].startswith("180\n") and "90.0%" in cell_texts[(0, 0)]
    assert cell_texts[(0, 1)].startswith("20\n")
    assert cell_texts[(1, 0)].startswith("50\n")
    assert cell_texts[(1, 1)].startswith("150\n") and "75.0%" in cell_texts[(1, 1)]
    assert [label.get_text() for label in ax.get_yticklabels()] == ["healthy", "tumor"]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["healthy", "tumor"]


def test_confusion_figure_handles_an_empty_row_and_rejects_negative_counts() -> None:
    assert len(confusion_figure(tn=0, fp=0, fn=3, tp=7).axes) == 1
    with pytest.raises(ValueError, match="non-negative"):
        confusion_figure(tn=-1, fp=0, fn=0, tp=0)


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 32, 32, 1)])
def test_reconstruction_grid_has_one_row_per_image(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    images = rng.random(shape)
    reconstructions = np.clip(images + rng.normal(scale=0.05, size=shape), 0, 1)
    fig = reconstruction_grid(
        images, reconstructions, np.abs(images - reconstructions), ["healthy 1", "tumor 1", "tumor 2"]
    )
    assert isinstance(fig, Figure)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 3 * 3
    assert len(fig.axes) == 3 * 3 + 3  # plus one residual colour bar per row
    assert [ax.get_ylabel() for ax in image_axes[::3]] == ["healthy 1", "tumor 1", "tumor 2"]


def test_reconstruction_grid_single_row() -> None:
    image = np.zeros((1, 8, 8))
    fig = reconstruction_grid(image, image, image, ["only"])
    assert len([ax for ax in fig.axes if ax.images]) == 3


def test_reconstruction_grid_shows_channel_zero_of_several() -> None:
    """Inputs in several Hounsfield windows (`preprocess.extra_windows`) show their brain window."""
    images = np.stack([np.full((1, 8, 8), 0.25), np.ones((1, 8, 8))], axis=-1)
    fig = reconstruction_grid(images, images, np.zeros((1, 8, 8)), ["two windows"])
    input_axis = next(ax for ax in fig.axes if ax.images)
    np.testing.assert_array_equal(input_axis.images[0].get_array(), np.full((8, 8), 0.25))


@pytest.mark.parametrize(
    ("images", "reconstructions", "maps", "labels", "message"),
    [
        (np.zeros((2, 8, 8)), np.zeros((2, 8, 9)), np.zeros((2, 8, 8)), ["a", "b"], "differ in shape"),
        (np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), np.zeros((2, 8, 7)), ["a", "b"], "differ in shape"),
        (np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), ["a"], "labels"),
        (np.zeros((2, 8, 8, 3, 1)), np.zeros((2, 8, 8, 3, 1)), np.zeros((2, 8, 8)), ["a", "b"], "shape"),
        (np.zeros((0, 8, 8)), np.zeros((0, 8, 8)), np.zeros((0, 8, 8)), [], "n >= 1"),
    ],
)
def test_reconstruction_grid_bad_inputs_raise(
    images: np.ndarray, reconstructions: np.ndarray, maps: np.ndarray, labels: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        reconstruction_grid(images, reconstructions, maps, labels)


def test_save_figure_writes_a_readable_png_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    fig = confusion_figure(tn=1, fp=2, fn=3, tp=4)
    path = tmp_path / "reports" / "plots" / "confusion.png"
    save_figure(fig, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        width_inches, height_inches = fig.get_size_inches()
        assert image.size == (round(width_inches * SAVE_DPI), round(height_inches * SAVE_DPI))
    assert [entry.name for entry in path.parent.iterdir()] == ["confusion.png"]


def test_save_figure_overwrites_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "figure.png"
    path.write_bytes(b"old")
    save_figure(confusion_figure(tn=1, fp=0, fn=0, tp=1), path)
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_save_figure_keeps_the_old_file_and_cleans_up_when_rendering_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "figure.png"
    path.write_bytes(b"previous plot")
    fig = confusion_figure(tn=1, fp=0, fn=0, tp=1)

    def fail_half_way(target: Path, **_: object) -> None:
        Path(target).write_bytes(b"partial")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(fig, "savefig", fail_half_way)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        save_figure(fig, path)
    assert path.read_bytes() == b"previous plot"
    assert [entry.name for entry in tmp_path.iterdir()] == ["figure.png"]


def test_figures_are_not_left_open_in_pyplot(tmp_path: Path) -> None:
    """Nothing to close after saving: the figures are never registered in pyplot's global list."""
    import matplotlib.pyplot as plt

    open_before = plt.get_fignums()
    save_figure(confusion_figure(tn=1, fp=0, fn=0, tp=1), tmp_path / "confusion.png")
    assert plt.get_fignums() == open_before
