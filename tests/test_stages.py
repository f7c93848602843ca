"""Stage entry points: user errors print one line and exit non-zero; a failed stage loses nothing."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.core.config import Settings
from pipeline.core.errors import DataError
from pipeline.core.params import ROOT
from pipeline.data.datasets import for_data, load_split
from pipeline.data.dicom import write_ct_slice
from pipeline.data.manifest import read_manifest
from pipeline.data.synthetic import generate
from pipeline.detection.calibration import Calibration, report_file
from pipeline.detection.scoring import SCORES
from pipeline.stages import download, runner, split, tracking
from pipeline.stages.packaging import load_detector


def test_a_config_error_is_one_line_not_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.download", "data=local"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "error: config value 'data.path' is required" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("entry", "override", "message"),
    [
        (
            "pipeline.stages.download",
            "model.width=0",
            "model.width: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            "pipeline",
            "preprocess.image_size=120",
            "model 'unet' halves the image 4 times: preprocess.image_size must be divisible by 16, got 120",
        ),
        (
            "pipeline.stages.check",
            "threshold.method=otsu",
            "threshold.method: unknown threshold rule 'otsu' "
            "(available: f1_optimal, mean_std, percentile, youden)",
        ),
    ],
)
def test_values_only_a_component_can_refuse_fail_before_any_stage_works(
    entry: str, override: str, message: str, tmp_path: Path
) -> None:
    """A value that only a component (a model, the registered scores or threshold rules) could refuse
    fails before download, not after split."""
    paths = [
        f"paths.{key}={tmp_path / key}" for key in ("raw", "manifests", "splits", "cache", "model", "reports")
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            entry,
            override,
            *paths,
            f"hydra.run.dir={tmp_path / 'hydra'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and f"error: {message}" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not any((tmp_path / key).exists() for key in ("raw", "manifests", "splits", "model"))


def test_a_failed_download_keeps_the_previous_data(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../outside.png", b"x")
    settings = make_settings("data=local", f"data.path={archive}", base=())
    previous = settings.paths.raw / "Healthy" / "kept.png"
    previous.parent.mkdir(parents=True)
    previous.write_bytes(b"earlier download")
    # its one entry is not extracted: nothing is left to use
    with pytest.raises(DataError, match="no Healthy/ and Tumor/ folders found"):
        download.run(settings)
    assert previous.read_bytes() == b"earlier download"
    assert not list(tmp_path.rglob("outside.png"))
    assert [p.name for p in settings.paths.raw.parent.iterdir()] == ["raw"]  # no temporary left behind


def _write_corrupt_dataset(folder: Path) -> None:
    """Class folders of files that only look like PNGs."""
    for name in ("Healthy", "Tumor"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            (folder / name / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)


def test_a_failed_download_keeps_the_last_good_data_and_fails_its_run(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Only corrupt images: data/raw and the manifests stay the last good ones; the run is FAILED with
    the error and keeps the rejects."""
    download.run(make_settings())
    settings = make_settings()
    good = {
        path: path.read_bytes()
        for path in [settings.paths.manifests / "raw.csv", settings.paths.manifests / "rejects.csv"]
    }
    raw_files = sorted(p.relative_to(settings.paths.raw) for p in settings.paths.raw.rglob("*"))
    _write_corrupt_dataset(tmp_path / "corrupt")
    broken = make_settings("data=local", f"data.path={tmp_path / 'corrupt'}")
    with pytest.raises(DataError, match="left as they were") as failure:
        download.run(broken)
    assert "\n" not in str(failure.value)
    assert {path: path.read_bytes() for path in good} == good
    assert sorted(p.relative_to(settings.paths.raw) for p in settings.paths.raw.rglob("*")) == raw_files
    assert not list(settings.paths.raw.parent.glob(".tmp-*"))
    tracking.setup(settings.mlflow)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.mlflow.data_experiment).experiment_id
    finished, failed = sorted(client.search_runs([experiment]), key=lambda run: run.info.start_time)
    assert finished.info.status == "FINISHED" and failed.info.status == "FAILED"
    assert failed.data.tags["error"].startswith("DataError: no decodable healthy or tumor images")
    artifacts = {a.path for a in client.list_artifacts(failed.info.run_id, "manifests")}
    assert artifacts == {"manifests/raw.csv", "manifests/rejects.csv"}


def test_a_folder_of_dicom_slices_is_a_training_source(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """DICOM in HU, windowed by the config, gives exactly the inputs its 8-bit export gives: here each
    PNG grey value g is written as HU g * 80/255, which the brain window (40/80) maps back to g/255. The
    DICOM slices are read in the extra Hounsfield windows too; the PNG export, in one window, is not."""
    generate(tmp_path / "png", 12, 6, seed=0, min_size=64, max_size=80, progress=False)
    for png in (tmp_path / "png").glob("[HT]*/*.png"):
        grey = np.asarray(Image.open(png), dtype=np.float64)
        target = tmp_path / "dicom" / png.relative_to(tmp_path / "png").with_suffix(".dcm")
        target.parent.mkdir(parents=True, exist_ok=True)
        write_ct_slice(target, grey * 80 / 255, slope=80 / 255, intercept=0.0)
    loaded = {}
    for source in ("png", "dicom"):
        settings = make_settings(
            "data=local",
            f"data.path={tmp_path / source}",
            "preprocess.image_size=32",
            "split.near_duplicate_distance=0",
            "train.progress=false",
            f"paths.raw={tmp_path / source}-raw",
            f"paths.cache={tmp_path / source}-cache",
            base=(),
        )
        download.run(settings)
        split.run(settings)
        loaded[source] = load_split(for_data(settings), "train")
    assert set(read_manifest(settings.paths.manifests / "raw.csv")["format"]) == {"DICOM"}
    assert [Path(p).stem for p in loaded["dicom"].frame["path"]] == [
        Path(p).stem for p in loaded["png"].frame["path"]
    ]
    assert loaded["png"].images.shape[-1] == 1 and loaded["dicom"].images.shape[-1] == 3
    np.testing.assert_allclose(loaded["dicom"].images[..., :1], loaded["png"].images, atol=1e-5)


def test_score_kind_auto_and_content_normalisation_go_from_calibrate_through_evaluate_and_package(
    make_settings: Callable[..., Settings],
) -> None:
    """calibrate chooses the kind on normalised validation scores; evaluate and the packaged detector
    apply that kind and that normaliser."""
    settings = make_settings("score.kind=auto", "score.normalize=content")
    for name in ("download", "split", "train", "calibrate", "evaluate", "package"):
        runner(name)(settings)
    calibration = Calibration.load(report_file(settings.paths))
    by_kind = calibration.val_roc_auc_by_score
    assert calibration.score_configured == "auto" and calibration.score in SCORES.names()
    assert by_kind[calibration.score] == max(by_kind.values())
    with_features = calibration.val_roc_auc_with_features  # score.features=auto: added where it helps
    assert calibration.features == (with_features is not None and with_features > by_kind[calibration.score])
    assert calibration.val_roc_auc == (with_features if calibration.features else by_kind[calibration.score])
    detector = load_detector(str(settings.paths.detector))
    assert detector.scoring.kind == calibration.score
    assert detector.normalizer is not None and detector.normalizer.as_dict() == calibration.normalizer
    scores = pd.read_csv(settings.paths.stage_reports("evaluate") / "scores.csv")
    test = load_split(for_data(settings), "test")
    np.testing.assert_allclose(
        scores.loc[scores["split"] == "test", "score"], detector.score(test.images), rtol=1e-5
    )
