"""The whole DVC pipeline on tiny synthetic data, in a temporary copy of the repository."""

from __future__ import annotations

import io
import json
import re
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bench.workspace import STAGES, copy_project, run
from pipeline.core import hardware
from pipeline.evaluation.localization import PIXEL_PERCENTILES
from tests.conftest import TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository holding the project's pipeline files, with tiny params, after `dvc repro`."""
    root = copy_project(tmp_path_factory.mktemp("project"), TINY)
    run(root, "dvc", "repro")
    return root


def test_repro_writes_every_stage_output(project: Path) -> None:
    lock = (project / "dvc.lock").read_text()
    assert all(f"  {stage}:" in lock for stage in STAGES)
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
    assert {
        "accuracy",
        "precision",
        "recall",
        "specificity",
        "f1",
        "roc_auc",
        "pr_auc",
        "extra_tumor_detection_rate",
        "blanked_roc_auc",
        "pixel_roc_auc",
        "dice",
    } <= set(metrics)
    for name in ("roc_auc", "accuracy", "recall", "specificity", "blanked_roc_auc"):
        assert metrics[f"{name}_ci_low"] <= metrics[name] <= metrics[f"{name}_ci_high"]
    assert {f"{method}_accuracy" for method in ("mean_std", "percentile", "f1_optimal", "youden")} <= set(
        metrics
    )
    validation = json.loads((project / "reports/calibrate/threshold.json").read_text())
    assert validation["val_roc_auc_ci_low"] <= validation["val_roc_auc"] <= validation["val_roc_auc_ci_high"]
    # the built-in tumors have masks: the pixel threshold is the healthy percentile that outlines them best
    assert validation["pixel_rule"] == "dice_optimal" and validation["pixel_percentile"] in PIXEL_PERCENTILES
    assert 0 < validation["val_dice"] <= 1
    by_source = pd.read_csv(project / "reports/evaluate/by_source.csv")
    assert set(by_source["by"]) == {"source", "format", "mode", "size"}
    assert {"metadata_roc_auc", "metadata_score_roc_auc"} <= set(metrics)  # the shortcut audit
    assert {"warning_separation", "warning_level_shortcut"} <= set(metrics)  # 0/1: the failure warnings
    names = ("roc.csv", "pr.csv", "confusion.csv", "by_level.csv", "by_kind.csv", "error_histogram.png")
    for name in (*names, "reconstructions.png"):
        assert (project / "reports/evaluate" / name).stat().st_size > 0


def test_second_repro_reruns_only_publish(project: Path) -> None:
    """Nothing changed: only `publish`, which always runs and only moves the registry alias."""
    output = run(project, "dvc", "repro")
    assert re.findall(r"Running stage '(\w+)'", output) == ["publish"]
    status = run(project, "dvc", "status")
    assert "changed" not in status.replace("always changed", ""), status


def test_metrics_and_plots_show(project: Path) -> None:
    metrics = json.loads(run(project, "dvc", "metrics", "show", "--json"))
    flat = json.dumps(metrics)
    assert "roc_auc" in flat and "threshold" in flat
    run(project, "dvc", "plots", "show", "-o", str(project / "plots"))
    assert (project / "plots" / "index.html").exists()


def test_mlflow_run_holds_params_metrics_threshold_plots_and_model(project: Path) -> None:
    run_id = json.loads((project / "reports/package/run.json").read_text())["run_id"]
    assert run_id == json.loads((project / "reports/evaluate/run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.data.params["model.name"] == "unet" and run.data.params["train.epochs"] == "2"
    assert run.data.params["precision"] == hardware.resolve_precision("auto", hardware.detect())
    assert {
        "loss",
        "val_loss",
        "threshold",
        "test_roc_auc",
        "test_accuracy",
        "test_extra_tumor_detection_rate",
    } <= set(run.data.metrics)
    assert len(client.get_metric_history(run_id, "loss")) == 2
    assert run.data.tags["stages"] == "train,calibrate,evaluate,package"
    artifacts = {
        a.path for folder in ("calibrate", "evaluate") for a in client.list_artifacts(run_id, folder)
    }
    assert {
        "calibrate/error_histogram.png",
        "evaluate/roc_pr.png",
        "evaluate/reconstructions.png",
    } <= artifacts
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert {model.name for model in models if model.source_run_id == run_id} == {"model", "detector"}
    assert client.get_model_version_by_alias("brain-ct-anomaly-detector", "current").run_id == run_id


def test_predict_and_the_registered_model_score_like_evaluate(project: Path) -> None:
    """One scoring path: the predict command (default model) and the registered pyfunc model give the
    evaluate stage's scores and labels on the same files, whatever precision the model trained in
    (bfloat16 on this kind of machine: the run logs which)."""
    evaluated = pd.read_csv(project / "reports/evaluate/scores.csv")
    run(project, sys.executable, "-m", "pipeline.predict", "data/raw", "--out", "predicted.csv")
    predicted = pd.read_csv(project / "predicted.csv")
    predicted["path"] = predicted["path"].str.removeprefix("data/raw/")
    both = evaluated.merge(predicted, on="path", suffixes=("", "_predicted"))
    assert len(both) == len(evaluated) and both["error"].isna().all()
    np.testing.assert_allclose(both["score_predicted"], both["score"], rtol=1e-5)
    assert (both["is_anomaly_predicted"] == both["is_anomaly"]).all()

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    registered = mlflow.pyfunc.load_model("models:/brain-ct-anomaly-detector@current")
    sample = evaluated.groupby("class").head(3)
    served = registered.predict(
        pd.DataFrame({"image": [(project / "data/raw" / p).read_bytes() for p in sample["path"]]})
    )
    np.testing.assert_allclose(served["score"], sample["score"], rtol=1e-5)
    assert served["is_anomaly"].tolist() == sample["is_anomaly"].tolist()


def test_exp_run_with_a_changed_threshold_reruns_only_what_depends_on_it(project: Path) -> None:
    # Every `dvc exp run` composes params.yaml from conf/ and its own -S overrides.
    before = json.loads((project / "reports/calibrate/threshold.json").read_text())
    output = run(
        project, "dvc", "exp", "run", *(arg for o in TINY for arg in ("-S", o)), "-S", "threshold=percentile"
    )
    ran = {stage for stage in STAGES if f"Running stage '{stage}'" in output}
    assert ran == {"check", "calibrate", "evaluate", "package", "publish"}  # check: every param change
    after = json.loads((project / "reports/calibrate/threshold.json").read_text())
    assert after["method"] == "percentile" and after["thresholds"] == before["thresholds"]
    assert after["threshold"] == before["thresholds"]["percentile"]
    table = run(project, "dvc", "exp", "show", "--csv")
    header = table.splitlines()[0]
    assert "threshold.method" in header and "roc_auc" in header


def _detector_used(project: Path, *model: str) -> tuple[float, str]:
    """(threshold, run id) of the detector `predict` scores with (`--model ...`, or the workspace's)."""
    image = next((project / "data/raw/Tumor").iterdir())
    run(project, sys.executable, "-m", "pipeline.predict", str(image), "--out", "used.csv", *model)
    row = pd.read_csv(project / "used.csv").iloc[0]
    return float(row["threshold"]), str(row["run_id"])


def test_the_alias_follows_the_workspace_when_every_stage_comes_from_the_run_cache(project: Path) -> None:
    """Experiment A, then B (another seed: every stage reruns), then A again: all of A's stages come
    back from DVC's run cache, and `models:/...@current` must name A's detector again, as
    `models/detector` does."""
    tiny = [arg for override in TINY for arg in ("-S", override)]
    run(project, "dvc", "exp", "run", *tiny)
    first = _detector_used(project)
    run(project, "dvc", "exp", "run", *tiny, "-S", "seed=7")
    assert _detector_used(project, "--model", "models:/brain-ct-anomaly-detector@current") != first
    output = run(project, "dvc", "exp", "run", *tiny)
    assert re.findall(r"Running stage '(\w+)'", output) == ["publish"]
    assert _detector_used(project) == first
    assert _detector_used(project, "--model", "models:/brain-ct-anomaly-detector@current") == first


def test_queued_experiments_over_two_variants(project: Path) -> None:
    """`dvc exp run --queue -S model=a,b` + `dvc queue start`: each variant runs the stages in processes
    of their own (so a saved VAE must load where its custom layer was never imported)."""
    for line in run(
        project,
        "dvc",
        "exp",
        "run",
        "--queue",
        "-S",
        "model=cae_bn,vae",
        *(arg for o in TINY for arg in ("-S", o)),
    ).splitlines():
        assert "Queued experiment" in line or "Queueing with overrides" in line
    run(project, "dvc", "queue", "start")
    deadline = time.monotonic() + 900
    while re.search(r"\b(Queued|Running)\b", status := run(project, "dvc", "queue", "status")):
        assert time.monotonic() < deadline, status
        time.sleep(5)
    assert status.count("Success") == 2, status  # `dvc queue logs NAME` tells why one failed
    table = pd.read_csv(io.StringIO(run(project, "dvc", "exp", "show", "--csv")))
    finished = table[table["model.name"].isin(["cae_bn", "vae"])]
    assert sorted(finished["model.name"]) == ["cae_bn", "vae"]
    assert finished["roc_auc"].notna().all()


def test_an_invalid_config_stops_dvc_before_it_deletes_any_output(project: Path) -> None:
    """DVC deletes a stage's outputs before running it, even one that then refuses its config: the
    `check` stage runs first and stops DVC while the workspace still holds every output."""
    model = (project / "models/model.keras").read_bytes()
    with pytest.raises(RuntimeError, match="train.epochs"):
        run(project, "dvc", "exp", "run", *(arg for o in TINY for arg in ("-S", o)), "-S", "train.epochs=-1")
    assert (project / "models/model.keras").read_bytes() == model
    assert (project / "data/raw").is_dir() and (project / "models/detector").is_dir()
