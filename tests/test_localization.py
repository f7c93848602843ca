"""Localisation: tumor outlines aligned with the model's inputs, and pixel metrics of residual maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.config import ThresholdConfig
from pipeline.data import synthetic
from pipeline.data.images import load_image, resize_square
from pipeline.detection.scoring import regions
from pipeline.evaluation.localization import (
    PIXEL_PERCENTILES,
    choose_pixel_threshold,
    dice,
    pixel_intervals,
    pixel_metrics,
    tumor_outlines,
)
from tests.conftest import preprocess_config, score_config

SEED, N_TUMOR, MIN_SIZE, MAX_SIZE = 5, 4, 80, 128
SIZE = 64
HEAD_CONFIG = preprocess_config(SIZE, head=True)


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    synthetic.generate(folder, 0, N_TUMOR, seed=SEED, min_size=MIN_SIZE, max_size=MAX_SIZE, progress=False)
    return folder


def _frame(indices: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"Tumor/ct_tumor ({i}).png" for i in indices], "class": "tumor"})


def _mask(raw_dir: Path, i: int) -> np.ndarray:
    return np.asarray(Image.open(raw_dir / "Masks" / f"ct_tumor ({i}).png")) > 0


def _without_tumor(raw_dir: Path, i: int) -> Path:
    """The i-th tumor slice rendered without its tumor, saved beside the data (same anatomy and noise)."""
    path = raw_dir / "plain" / f"{i}.png"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        plain, _ = synthetic._render((SEED, 1, i), MIN_SIZE, MAX_SIZE, tumor=False)
        Image.fromarray(plain).save(path)
    return path


def test_outlines_are_boolean_masks_in_the_model_input_frame(raw_dir: Path) -> None:
    indices = list(range(1, N_TUMOR + 1))
    outlines = tumor_outlines(raw_dir, _frame(indices), HEAD_CONFIG)
    assert outlines is not None and outlines.shape == (N_TUMOR, SIZE, SIZE) and outlines.dtype == bool
    images = np.stack([load_image(raw_dir / path, HEAD_CONFIG) for path in _frame(indices)["path"]])[
        ..., None
    ]
    heads = regions(images, score_config(region="head"), HEAD_CONFIG.head.threshold)
    sizes = {np.asarray(Image.open(raw_dir / path)).shape for path in _frame(indices)["path"]}
    assert len(sizes) > 1  # slices of several sizes: each needs its own crop
    for i, (outline, head) in enumerate(zip(outlines, heads, strict=True), start=1):
        assert outline.any(), i
        assert (outline & head).sum() >= 0.95 * outline.sum(), i  # on the head the model sees


def test_outlines_mark_the_pixels_the_tumor_changed_in_the_model_input(raw_dir: Path) -> None:
    outlines = tumor_outlines(raw_dir, _frame(list(range(1, N_TUMOR + 1))), HEAD_CONFIG)
    assert outlines is not None
    for i, outline in enumerate(outlines, start=1):
        image = load_image(raw_dir / f"Tumor/ct_tumor ({i}).png", HEAD_CONFIG)
        plain = load_image(_without_tumor(raw_dir, i), HEAD_CONFIG)
        change = np.abs(image - plain)
        elsewhere = ~outline & (image > 0)
        assert change[outline].mean() > 5 * change[elsewhere].mean(), i


def test_outlines_without_head_settings_are_the_resized_masks_in_frame_order(raw_dir: Path) -> None:
    outlines = tumor_outlines(raw_dir, _frame([3, 1]), preprocess_config(SIZE))
    assert outlines is not None and outlines.shape == (2, SIZE, SIZE)
    for outline, i in zip(outlines, (3, 1), strict=True):
        np.testing.assert_array_equal(
            outline, resize_square(_mask(raw_dir, i).astype(np.float32), SIZE) > 0.5
        )
    assert not np.array_equal(outlines[0], outlines[1])


def test_no_outlines_unless_every_row_has_one(raw_dir: Path, tmp_path: Path) -> None:
    assert tumor_outlines(raw_dir, _frame([]), HEAD_CONFIG) is None
    assert tumor_outlines(raw_dir, _frame([1, N_TUMOR + 1]), HEAD_CONFIG) is None  # no such mask file
    healthy = pd.DataFrame({"path": ["Healthy/ct_healthy (1).png"], "class": "healthy"})
    assert tumor_outlines(raw_dir, healthy, HEAD_CONFIG) is None
    (tmp_path / "Tumor").mkdir()
    (tmp_path / "Tumor" / "ct_tumor (1).png").write_bytes(
        (raw_dir / "Tumor" / "ct_tumor (1).png").read_bytes()
    )
    assert tumor_outlines(tmp_path, _frame([1]), HEAD_CONFIG) is None  # no Masks folder at all


# --- pixel_metrics ---------------------------------------------------------------------------------


def _outlines() -> np.ndarray:
    outlines = np.zeros((2, 4, 4), dtype=bool)
    outlines[0, 1:3, 1:3] = True  # 4 tumor pixels
    outlines[1, 0, 0] = True  # 1
    return outlines


def test_a_perfect_map_has_pixel_auc_and_dice_one() -> None:
    outlines = _outlines()
    maps = np.where(outlines, 0.8, 0.2)
    maps[1, 3, :] = 0.0  # unscored pixels (outside the head) do not count
    perfect = pixel_metrics(maps, outlines, 0.5)
    assert perfect == {"pixel_roc_auc": 1.0, "pixel_pr_auc": 1.0, "dice": 1.0, "slice_best_dice": 1.0}
    assert pixel_metrics(maps, outlines, 0.9)["dice"] == 0.0  # nothing flagged
    # Everything scored flagged: 5 tumor pixels among 28 flagged, Dice = 2 * 5 / (28 + 5).
    assert pixel_metrics(maps, outlines, 0.1)["dice"] == pytest.approx(10 / 33)


def test_known_auc_and_dice_of_an_imperfect_map() -> None:
    outlines = np.zeros((1, 2, 2), dtype=bool)
    outlines[0, 0] = True  # two tumor pixels: scored 0.9 and 0.3; the others 0.5 and 0.1
    maps = np.array([[[0.9, 0.3], [0.5, 0.1]]])
    metrics = pixel_metrics(maps, outlines, 0.4)
    assert metrics["pixel_roc_auc"] == pytest.approx(0.75)  # 3 of the 4 (tumor, other) pairs ordered
    assert metrics["dice"] == pytest.approx(0.5)  # flagged {0.9, 0.5}: one of two, against two


def test_unscored_pixels_are_left_out_of_the_auc() -> None:
    outlines = _outlines()
    maps = np.where(outlines, 0.8, 0.2)
    maps[0, 1, 1] = 0.0  # a tumor pixel outside the scored region
    metrics = pixel_metrics(maps, outlines, 0.5)
    assert metrics["pixel_roc_auc"] == 1.0
    assert metrics["dice"] == pytest.approx(2 * 4 / (4 + 5))  # but missed by the flagged pixels


def test_auc_is_undefined_without_tumor_or_without_other_pixels() -> None:
    no_tumor = np.zeros((1, 4, 4), dtype=bool)
    metrics = pixel_metrics(np.full((1, 4, 4), 0.3), no_tumor, 0.5)
    assert np.isnan(metrics["pixel_roc_auc"]) and metrics["dice"] == 0.0
    all_tumor = np.ones((1, 4, 4), dtype=bool)
    metrics = pixel_metrics(np.full((1, 4, 4), 0.3), all_tumor, 0.2)
    assert np.isnan(metrics["pixel_roc_auc"]) and metrics["dice"] == 1.0


def test_best_dice_per_slice_takes_each_slices_best_threshold() -> None:
    """Slice 0 is perfect at threshold 0.5, slice 1 only when its 0.3 pixel is flagged: one threshold
    for both cannot do what each slice's own can."""
    outlines = _outlines()
    maps = np.where(outlines, 0.8, 0.2)
    maps[1] = np.where(outlines[1], 0.3, 0.1)
    assert pixel_metrics(maps, outlines, 0.5)["slice_best_dice"] == 1.0
    assert pixel_metrics(maps, outlines, 0.5)["dice"] < 1.0


def test_pixel_intervals_resample_slices_and_hold_the_estimate() -> None:
    rng = np.random.default_rng(0)
    outlines = rng.random((30, 16, 16)) < 0.1
    maps = np.clip(0.3 * outlines + rng.random((30, 16, 16)) * 0.7, 0.01, 1)
    point = pixel_metrics(maps, outlines, 0.6)
    intervals = pixel_intervals(maps, outlines, 0.6, n_resamples=500, seed=0)
    for name in ("pixel_roc_auc", "dice"):
        assert intervals[f"{name}_ci_low"] <= point[name] <= intervals[f"{name}_ci_high"]
        assert intervals[f"{name}_ci_high"] - intervals[f"{name}_ci_low"] < 0.2
    assert intervals == pixel_intervals(maps, outlines, 0.6, n_resamples=500, seed=0)


def _pixel_config(rule: str, percentile: float = 99.5) -> ThresholdConfig:
    return ThresholdConfig(method="mean_std", k=1.0, percentile=95, pixel=rule, pixel_percentile=percentile)


def _faint_lesions(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Healthy maps of uniform noise in [0, 1); lesion slices whose outlined pixels sit at 0.96-0.99:
    above most healthy pixels, below the healthy 99.5th percentile."""
    rng = np.random.default_rng(seed)
    healthy = rng.uniform(1e-3, 1.0, (20, 32, 32))
    lesions = rng.uniform(1e-3, 0.9, (10, 32, 32))
    outlines = np.zeros(lesions.shape, dtype=bool)
    outlines[:, 10:16, 10:16] = True
    lesions[outlines] = rng.uniform(0.96, 0.99, outlines.sum())
    return healthy, lesions, outlines


def test_the_pixel_threshold_is_the_configured_healthy_percentile_without_outlines() -> None:
    healthy, lesions, outlines = _faint_lesions()
    expected = float(np.percentile(healthy, 99.5))
    for chosen in (
        choose_pixel_threshold(healthy, _pixel_config("auto")),  # no validation outlines
        choose_pixel_threshold(healthy, _pixel_config("percentile"), lesions, outlines),
    ):
        assert chosen.value == pytest.approx(expected) and chosen.percentile == 99.5
        assert chosen.rule == "percentile"
    assert np.isnan(choose_pixel_threshold(healthy, _pixel_config("auto")).val_dice)


def test_auto_takes_the_healthy_percentile_that_outlines_the_validation_lesions_best() -> None:
    healthy, lesions, outlines = _faint_lesions()
    chosen = choose_pixel_threshold(healthy, _pixel_config("auto"), lesions, outlines)
    assert chosen.rule == "dice_optimal" and chosen.percentile in PIXEL_PERCENTILES
    assert chosen.percentile < 99.5  # the faint lesions lie under the configured percentile
    assert chosen.value == pytest.approx(float(np.percentile(healthy, chosen.percentile)))
    assert chosen.val_dice == pytest.approx(dice(lesions, outlines, chosen.value))
    configured = dice(lesions, outlines, float(np.percentile(healthy, 99.5)))
    assert chosen.val_dice > configured + 0.3
    every = [dice(lesions, outlines, float(np.percentile(healthy, p))) for p in PIXEL_PERCENTILES]
    assert chosen.val_dice == pytest.approx(max(every))


def test_auto_keeps_the_configured_percentile_where_nothing_outlines_better() -> None:
    healthy, lesions, outlines = _faint_lesions()
    empty = np.zeros_like(outlines)  # outlines given, none marked: every candidate's Dice is 0
    chosen = choose_pixel_threshold(healthy, _pixel_config("auto", 97.5), lesions, empty)
    assert chosen.percentile == 97.5 and chosen.rule == "percentile"
