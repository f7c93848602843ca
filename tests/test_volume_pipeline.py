"""The whole pipeline on CT volumes a user brings: a folder of NIfTI scans with lesion masks (here the
built-in phantom scans), split by patient, with slice-, pixel- and scan-level results, and the
detector's maps written back on a scan's own voxel grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.core.params import ROOT
from pipeline.data.synthetic import generate_volumes
from pipeline.evaluation.diagnostics import LEVEL_BANDS, LEVEL_SHORTCUT_TAG, WARNING_TAGS
from pipeline.stages.packaging import load_detector

pytestmark = pytest.mark.slow
TINY = [
    "preprocess.image_size=32",
    "model.width=4",
    "train.epochs=2",
    "train.progress=false",
    "evaluate.n_examples=2",
]


def _run(*args: str) -> str:
    """Run the pipeline with the tracking store its arguments name: `mlflow.set_tracking_uri` in an
    earlier test leaves MLFLOW_TRACKING_URI in this process's environment, which would take precedence."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m pipeline data=local data.path=<NIfTI folder>` on 16 phantom patients."""
    tmp = tmp_path_factory.mktemp("volumes")
    generate_volumes(tmp / "scans", patients=16, slices=8, size=64, lesion_share=0.5, seed=0, progress=False)
    _run(
        "-m",
        "pipeline",
        "data=local",
        f"data.path={tmp / 'scans'}",
        *TINY,
        f"hydra.run.dir={tmp / 'job'}",
        f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        f"mlflow.artifact_root={tmp / 'artifacts'}",
    )
    return tmp


def test_patients_are_split_whole_and_reported(run: Path) -> None:
    summary = json.loads((run / "job/reports/data/split.json").read_text())
    assert summary["by_patient"] == 1
    assert summary["patients_train"] + summary["patients_val"] + summary["patients_test"] == 16
    splits = pd.concat(
        pd.read_csv(run / f"job/data/splits/{name}.csv").assign(split=name)
        for name in ("train", "val", "test")
    )
    assert (splits.groupby("patient")["split"].nunique() == 1).all()


def test_slice_pixel_and_scan_level_results(run: Path) -> None:
    metrics = json.loads((run / "job/reports/evaluate/metrics.json").read_text())
    assert {"roc_auc", "roc_auc_ci_low", "pixel_roc_auc", "dice", "scans", "anomalous_scans"} <= set(metrics)
    scans = pd.read_csv(run / "job/reports/evaluate/scans.csv")
    test = pd.read_csv(run / "job/data/splits/test.csv")
    assert len(scans) == metrics["scans"] == test["patient"].nunique()
    assert set(scans["top_slice"]) <= set(test["path"])
    if 0 < metrics["anomalous_scans"] < metrics["scans"]:
        assert 0 <= metrics["scan_roc_auc"] <= 1 and 0 <= metrics["scan_roc_auc_top_k"] <= 1


def test_where_the_detector_fails_per_level_band_and_its_warnings(run: Path) -> None:
    """Slices of scans get a row per level band; the phantoms have no lesion kinds, so by_kind.csv has
    none (DVC still finds it); each warning is a 0/1 metric and, where it fires, an MLflow tag."""
    metrics = json.loads((run / "job/reports/evaluate/metrics.json").read_text())
    by_level = pd.read_csv(run / "job/reports/evaluate/by_level.csv")
    test = pd.read_csv(run / "job/data/splits/test.csv")
    assert len(by_level) == len(LEVEL_BANDS)
    assert by_level["healthy"].sum() + by_level["anomalous"].sum() == len(test)
    assert pd.read_csv(run / "job/reports/evaluate/by_kind.csv").empty
    assert (run / "job/reports/evaluate/score_by_level.png").stat().st_size > 0
    flags = {tag: metrics[tag.replace(".", "_")] for tag in WARNING_TAGS}
    assert set(flags.values()) <= {0, 1}
    assert flags[LEVEL_SHORTCUT_TAG] == int(metrics["level_only_roc_auc"] > metrics["roc_auc"])
    mlflow.set_tracking_uri(f"sqlite:///{run / 'mlflow.db'}")
    run_id = json.loads((run / "job/reports/evaluate/run.json").read_text())["run_id"]
    tags = mlflow.get_run(run_id).data.tags
    assert {tag for tag, flag in flags.items() if flag} == set(WARNING_TAGS) & set(tags)


def test_scans_in_hounsfield_units_are_read_in_the_default_windows(run: Path) -> None:
    """The brain window plus the default subdural and bone windows: three channels, logged as such."""
    detector = load_detector(str(run / "job/models/detector"))
    assert detector.preprocess.channels == 3 and detector.model.input_shape[-1] == 3
    mlflow.set_tracking_uri(f"sqlite:///{run / 'mlflow.db'}")
    run_id = json.loads((run / "job/reports/package/run.json").read_text())["run_id"]
    assert mlflow.get_run(run_id).data.params["preprocess.extra_windows"].count("level") == 2


def test_predict_maps_land_on_the_scans_voxel_grid(run: Path) -> None:
    scan = run / "scans/patient000/head.nii.gz"
    _run(
        "-m",
        "pipeline.predict",
        str(run / "scans/patient000"),
        "--model",
        str(run / "job/models/detector"),
        "--out",
        str(run / "predicted.csv"),
        "--maps",
        str(run / "maps"),
    )
    predicted = pd.read_csv(run / "predicted.csv")
    assert predicted["path"].str.endswith("head.nii.gz").all()  # the mask beside it is not scored
    assert sorted(predicted["slice"]) == list(range(8))
    source = nib.load(scan)
    for name in ("head.nii.gz.map.nii.gz", "head.nii.gz.mask.nii.gz"):
        written = nib.load(run / "maps" / name)
        assert written.shape == source.shape and np.allclose(written.affine, source.affine)
