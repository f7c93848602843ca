"""The whole DVC pipeline on tiny synthetic data, in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import ROOT
from tests.conftest import TINY

pytestmark = pytest.mark.slow
STAGES = ("download", "split", "train", "calibrate", "evaluate")


def _run(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` in dvc.yaml is this one
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository holding the project's pipeline files, with tiny params, after `dvc repro`."""
    root = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml"):
        shutil.copy(ROOT / name, root / name)
    for folder in ("conf", "pipeline", ".dvc"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
    _run(root, "git", "init", "-q")
    _run(root, sys.executable, "-m", "pipeline.config", *TINY)
    _run(root, "git", "add", "-A")
    _run(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny")
    _run(root, "dvc", "repro")
    return root


def test_repro_writes_every_stage_output(project: Path) -> None:
    lock = (project / "dvc.lock").read_text()
    assert all(f"  {stage}:" in lock for stage in STAGES)
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
    assert {"accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc",
            "extra_tumor_detection_rate"} <= set(metrics)
    for name in ("roc.csv", "pr.csv", "confusion.csv", "error_histogram.png", "reconstructions.png"):
        assert (project / "reports/evaluate" / name).stat().st_size > 0


def test_second_repro_reruns_nothing(project: Path) -> None:
    output = _run(project, "dvc", "repro")
    assert "Running stage" not in output
    assert "up to date" in _run(project, "dvc", "status")


def test_metrics_and_plots_show(project: Path) -> None:
    metrics = json.loads(_run(project, "dvc", "metrics", "show", "--json"))
    flat = json.dumps(metrics)
    assert "roc_auc" in flat and "threshold" in flat
    _run(project, "dvc", "plots", "show", "-o", str(project / "plots"))
    assert (project / "plots" / "index.html").exists()


def test_mlflow_run_holds_params_metrics_threshold_plots_and_model(project: Path) -> None:
    run_id = json.loads((project / "reports/evaluate/run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.data.params["model.name"] == "cae" and run.data.params["train.epochs"] == "2"
    assert {"loss", "val_loss", "threshold", "test_roc_auc", "test_accuracy",
            "test_extra_tumor_detection_rate"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run_id, "loss")) == 2
    assert run.data.tags["stages"] == "train,calibrate,evaluate"
    artifacts = {a.path for folder in ("calibrate", "evaluate") for a in client.list_artifacts(run_id, folder)}
    assert {"calibrate/error_histogram.png", "evaluate/roc_pr.png", "evaluate/reconstructions.png"} <= artifacts
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert any(model.source_run_id == run_id for model in models)


def test_exp_run_with_a_changed_threshold_reruns_only_what_depends_on_it(project: Path) -> None:
    output = _run(project, "dvc", "exp", "run", "-S", "calibrate.k=2")
    ran = {stage for stage in STAGES if f"Running stage '{stage}'" in output}
    assert ran == {"calibrate", "evaluate"}
    threshold = json.loads((project / "reports/calibrate/threshold.json").read_text())
    assert threshold["k"] == 2.0
    assert "calibrate.k" in _run(project, "dvc", "exp", "show", "--no-pager")
