"""The feature-space score: which layer it reads, what the memory holds, how far a region lies from
healthy ones, and how calibrate, evaluate and the packaged detector carry it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import Settings
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.data.datasets import for_data, load_split
from pipeline.detection.calibration import Calibration, report_file
from pipeline.detection.features import BANK, SCALE, PatchMemory, feature_layer
from pipeline.models import build_model
from pipeline.stages import runner
from pipeline.stages.packaging import load_detector


def _discs(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Healthy-looking slices: a grey disc of slightly varying brightness on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
    levels = rng.uniform(0.45, 0.55, size=n)
    return (disc[None] * levels[:, None, None])[..., None].astype(np.float32)


def _unet() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model("unet", (32, 32, 1), {"width": 4, "depth": 3, "batch_norm": False})


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("unet", {"width": 4, "depth": 3, "batch_norm": False}),
        ("cae", {"width": 4, "depth": 3, "latent_dim": 8}),
        ("deep_cae", {"width": 4, "depth": 3, "latent_dim": 8, "convs_per_level": 2, "batch_norm": True}),
    ],
)
def test_the_feature_layer_is_the_encoders_last_at_a_quarter_of_the_input(name: str, params: dict) -> None:
    model = build_model(name, (32, 32, 1), params)
    layer = model.get_layer(feature_layer(model))
    assert layer.output.shape[1:3] == (32 // SCALE, 32 // SCALE)
    coarsest = min(lay.output.shape[1] for lay in model.layers if len(lay.output.shape) == 4)
    later = model.layers[model.layers.index(layer) + 1 :]
    assert any(lay.output.shape[1] == coarsest for lay in later if len(lay.output.shape) == 4)


def test_a_model_that_halves_its_input_once_has_no_feature_layer_and_an_empty_memory() -> None:
    model = build_model("cae", (32, 32, 1), {"width": 4, "depth": 1, "latent_dim": 8})
    assert feature_layer(model) is None
    images = _discs(4)
    memory = PatchMemory.fit(model, images, images[..., 0] > 0, seed=0)
    assert not memory.usable


def test_the_memory_holds_features_from_inside_the_regions_only() -> None:
    model, images = _unet(), _discs(6)
    masks = np.zeros(images.shape[:3], dtype=bool)
    masks[:, :8, :8] = True  # the top-left feature cells only: the disc barely reaches there
    memory = PatchMemory.fit(model, images, masks, seed=0)
    assert memory.usable and len(memory.bank) == 6 * (8 // SCALE) ** 2 <= BANK
    # a training slice's own top-left regions are in the memory: distance zero there
    distances = memory.distance_maps(model, images[:1])[0]
    assert distances.shape == (32, 32)
    np.testing.assert_allclose(distances[: 8 - SCALE, : 8 - SCALE], 0.0, atol=1e-3)


def test_a_region_unlike_any_healthy_one_scores_higher() -> None:
    model, healthy = _unet(), _discs(40)
    masks = healthy[..., 0] > 0
    memory = PatchMemory.fit(model, healthy, masks, seed=0)
    test = _discs(10, seed=1)
    lesioned = test.copy()
    lesioned[:, 12:20, 12:20, 0] = 1.0  # a bright square inside each disc
    test_masks = test[..., 0] > 0
    normal = memory.scores(model, test, test_masks, percentile=99)
    anomalous = memory.scores(model, lesioned, test_masks, percentile=99)
    assert np.all(anomalous > normal.max())


def test_the_memory_survives_a_round_trip_and_a_corrupt_file_is_named(tmp_path: Path) -> None:
    model, images = _unet(), _discs(4)
    memory = PatchMemory.fit(model, images, images[..., 0] > 0, seed=3)
    memory.save(tmp_path / "patches.npz")
    loaded = PatchMemory.load(tmp_path / "patches.npz")
    assert loaded.layer == memory.layer
    np.testing.assert_array_equal(loaded.bank, memory.bank)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(PipelineError, match="broken.npz: not a patch memory"):
        PatchMemory.load(tmp_path / "broken.npz")


def test_adding_two_scores_needs_them_on_one_scale(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(
        ConfigError, match=r"set score.normalize \(content, reference or auto\) or score.features=never"
    ):
        make_settings("score.normalize=none", "score.features=always")


def test_features_always_go_from_calibrate_through_evaluate_and_the_packaged_detector(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings("score.features=always")
    for name in ("download", "split", "train", "calibrate", "evaluate", "package"):
        runner(name)(settings)
    calibration = Calibration.load(report_file(settings.paths))
    assert calibration.features is True and calibration.feature_normalizer
    assert calibration.val_roc_auc == calibration.val_roc_auc_with_features
    assert settings.paths.patches.is_file()
    detector = load_detector(str(settings.paths.detector))
    assert detector.features is not None
    assert detector.features.normalizer.as_dict() == calibration.feature_normalizer
    np.testing.assert_array_equal(
        detector.features.memory.bank, PatchMemory.load(settings.paths.patches).bank
    )
    scores = pd.read_csv(settings.paths.stage_reports("evaluate") / "scores.csv")
    test = load_split(for_data(settings), "test")
    np.testing.assert_allclose(
        scores.loc[scores["split"] == "test", "score"], detector.score(test.images), rtol=1e-5
    )


def test_features_never_leave_the_score_as_it_was(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("score.features=never")
    for name in ("download", "split", "train", "calibrate", "evaluate", "package"):
        runner(name)(settings)
    calibration = Calibration.load(report_file(settings.paths))
    assert calibration.features is False and calibration.feature_normalizer is None
    assert calibration.val_roc_auc == calibration.val_roc_auc_by_score[calibration.score]
    assert PatchMemory.load(settings.paths.patches).usable  # fitted all the same: a stage output
    assert load_detector(str(settings.paths.detector)).features is None
