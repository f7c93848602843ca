"""`python -m pipeline` as users sweep it: Hydra multirun over variants, a failing job, and the Optuna
search, each in a fresh folder (the app's relative paths, MLflow store included, land there)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.core.params import ROOT

pytestmark = pytest.mark.slow


def _pipeline(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline", *overrides, "experiment=smoke", "hydra.sweep.dir=sweep"]
    return subprocess.run(
        command,
        check=False,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )


def _client(cwd: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")


def _runs(cwd: Path, experiment: str = "brain-ct-anomaly") -> list[Run]:
    client = _client(cwd)
    return client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id], order_by=["attributes.start_time ASC"]
    )


def test_multirun_over_two_variants_makes_one_run_each(tmp_path: Path) -> None:
    result = _pipeline(tmp_path, "-m", "model=cae,vae")
    assert result.returncode == 0, result.stderr[-3000:]

    runs = _runs(tmp_path)
    assert [run.data.tags["model"] for run in runs] == ["cae", "vae"]
    assert [re.sub(r" · \d{4}-\d\d-\d\d \d\d:\d\d", "", run.info.run_name) for run in runs] == [
        "cae-w4-z128 · synthetic · job 0",
        "vae-z128-beta1 · synthetic · job 1",
    ]
    assert all(run.info.status == "FINISHED" for run in runs)
    sweep = tmp_path / "sweep"
    assert {run.data.tags["sweep"] for run in runs} == {str(sweep.resolve())}
    assert [run.data.tags["sweep_overrides"] for run in runs] == [
        "experiment=smoke,model=cae",
        "experiment=smoke,model=vae",
    ]
    for job, run in enumerate(runs):
        assert {"val_roc_auc", "test_roc_auc"} <= set(run.data.metrics)
        assert (sweep / str(job) / "models" / "detector" / "MLmodel").exists()
    assert len(_runs(tmp_path, "brain-ct-data")) == 2  # one download and one split for the whole sweep
    assert not (tmp_path / "models").exists()  # the DVC workspace is not touched
    assert _client(tmp_path).search_registered_models() == []  # nor the registry's alias


def test_a_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """36 px does not suit the autoencoder's four stride-2 levels: that job fails, the next one runs."""
    result = _pipeline(tmp_path, "-m", "preprocess.image_size=36,32")
    assert result.returncode != 0
    assert "divisible by 16" in result.stderr

    failed, finished = _runs(tmp_path)
    assert failed.info.status == "FAILED"
    assert "divisible by 16" in failed.data.tags["error"]
    assert failed.data.params["preprocess.image_size"] == "36"
    assert finished.info.status == "FINISHED"
    assert "test_roc_auc" in finished.data.metrics


def test_optuna_search_maximises_validation_roc_auc(tmp_path: Path) -> None:
    result = _pipeline(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=2")
    assert result.returncode == 0, result.stderr[-3000:]

    runs = _runs(tmp_path)
    assert len(runs) == 2 and all(run.data.tags["model"] == "vae" for run in runs)
    assert len({run.data.params["train.learning_rate"] for run in runs}) == 2  # sampled, not the default
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(run.data.metrics["val_roc_auc"] for run in runs))
