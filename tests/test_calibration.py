"""The calibration record (`pipeline.detection.calibration`): its file round-trips, a file it cannot
trust is one error naming the file, and `calibrator.calibrate` builds it from the validation split
alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.data.datasets import Split
from pipeline.detection.calibration import FILE, VERSION, Calibration
from pipeline.detection.calibrator import calibrate
from pipeline.detection.detector import Detector
from pipeline.models import build_model

RECORD = Calibration(
    threshold=0.42,
    method="mean_std",
    score="residual_percentile",
    score_configured="auto",
    normalizer={"name": "reference", "levels": [0.25, None], "anatomy": [[1.0, 2.0]], "floor": 0.01},
    normalize="reference",
    normalize_configured="auto",
    features=True,
    feature_normalizer={"name": "content", "contents": [0.1], "medians": [0.2], "spreads": [0.3]},
    thresholds={"mean_std": 0.42, "percentile": 0.5, "f1_optimal": 0.61, "youden": 0.58},
    pixel_threshold=0.07,
    pixel_rule="dice_optimal",
    pixel_percentile=99.0,
    val_score_mean=0.3,
    val_score_std=0.12,
    val_images=40,
    val_tumor_images=12,
    val_dice=0.55,
    val_roc_auc=0.91,
    val_pr_auc=0.8,
    val_roc_auc_ci_low=0.85,
    val_roc_auc_ci_high=0.96,
    val_roc_auc_by_score={"mse": 0.7, "residual_percentile": 0.88},
    val_roc_auc_by_normalizer={"content": 0.84, "reference": 0.88},
    val_roc_auc_with_features=0.91,
)


def test_a_record_survives_its_file_under_its_field_names(tmp_path: Path) -> None:
    path = tmp_path / FILE
    RECORD.save(path)
    assert Calibration.load(path) == RECORD
    assert set(json.loads(path.read_text())) == {field.name for field in fields(Calibration)}


def test_fields_that_do_not_apply_are_left_out_of_the_file_and_come_back_as_none(tmp_path: Path) -> None:
    """Without validation tumors: no ranking, no Dice; the normalisers are written as null all the same."""
    absent = {
        "val_dice",
        "val_roc_auc",
        "val_pr_auc",
        "val_roc_auc_ci_low",
        "val_roc_auc_ci_high",
        "val_roc_auc_by_score",
        "val_roc_auc_by_normalizer",
        "val_roc_auc_with_features",
    }
    without = replace(
        RECORD,
        normalizer=None,
        feature_normalizer=None,
        val_tumor_images=0,
        **dict.fromkeys(absent),
    )
    without.save(tmp_path / FILE)
    written = json.loads((tmp_path / FILE).read_text())
    assert set(written) == {field.name for field in fields(Calibration)} - absent
    assert written["normalizer"] is None and written["feature_normalizer"] is None
    assert written["version"] == VERSION
    assert Calibration.load(tmp_path / FILE) == without


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda saved: saved | {"version": VERSION + 1}, f"version {VERSION + 1}, this code reads version"),
        (lambda saved: {k: v for k, v in saved.items() if k != "version"}, "version None"),
        (lambda saved: {k: v for k, v in saved.items() if k != "pixel_threshold"}, "pixel_threshold: Field"),
        (lambda saved: saved | {"val_images": "40"}, "val_images: Input should be a valid integer"),
        (lambda saved: saved | {"thresholds": {"mean_std": "high"}}, "thresholds.mean_std: Input should"),
        (lambda saved: saved | {"threshold_typo": 1.0}, "threshold_typo: Unexpected"),
        (lambda saved: [saved], "version None"),
    ],
)
def test_a_record_it_cannot_trust_is_an_error_naming_the_file(
    tmp_path: Path, change: Callable[[dict], object], message: str
) -> None:
    path = tmp_path / FILE
    path.write_text(json.dumps(change(RECORD.as_json())))
    with pytest.raises(PipelineError, match=rf"^{path}: .*{message}"):
        Calibration.load(path)


@pytest.mark.parametrize(
    ("content", "message"), [(None, "no calibration record"), ('{"threshold": 0.', "cannot")]
)
def test_a_missing_or_truncated_file_is_an_error_naming_it(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / FILE
    if content is not None:
        path.write_text(content)
    with pytest.raises(PipelineError, match=rf"^{path}: {message}"):
        Calibration.load(path)


def _split(name: str, healthy: int, tumors: int, seed: int) -> Split:
    """Noisy slices; the tumor ones carry a bright square."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.2, 0.4, size=(healthy + tumors, 32, 32, 1)).astype(np.float32)
    images[healthy:, 10:20, 10:20] = 1.0
    frame = pd.DataFrame(
        {
            "path": [f"{name}/{i}.png" for i in range(len(images))],
            "class": ["healthy"] * healthy + ["tumor"] * tumors,
        }
    )
    return Split(name, frame, images)


def test_calibrate_applies_mean_plus_k_std_of_the_healthy_validation_scores(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        "preprocess.extra_windows=[]",
        "score.kind=mse",
        "score.region=image",
        "score.normalize=none",
        "score.features=never",
        "threshold.method=mean_std",
        "threshold.k=2",
        "threshold.pixel=percentile",
        "evaluate.bootstrap=100",
    )
    keras.utils.set_random_seed(0)
    model = build_model("cae", (32, 32, 1), {"width": 4, "depth": 2, "latent_dim": 8})
    detector = Detector.uncalibrated(model, settings.preprocess, settings.score)
    val = _split("val", healthy=12, tumors=4, seed=1)
    calibrated = calibrate(detector, settings, val, _split("train", healthy=8, tumors=0, seed=2))
    calibration = calibrated.calibration
    healthy = detector.score(val.images)[val.labels == 0].astype(np.float64)
    assert calibration.threshold == pytest.approx(healthy.mean() + 2 * healthy.std(), rel=1e-5)
    assert calibration.thresholds["mean_std"] == calibration.threshold and calibration.method == "mean_std"
    assert (calibration.val_images, calibration.val_tumor_images) == (12, 4)
    assert (calibration.score, calibration.normalize, calibration.features) == ("mse", "none", False)
    assert calibration.val_roc_auc is not None and calibration.val_roc_auc_ci_low is not None
    np.testing.assert_allclose(calibrated.applied, detector.score(val.images), rtol=1e-5)
