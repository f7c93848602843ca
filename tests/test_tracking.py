"""MLflow conventions: one run per model, reopened by later stages, forked when their config changed;
run names that say what ran, on which data, when."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.core.config import Settings
from pipeline.core.errors import ServiceError
from pipeline.core.io import read_json
from pipeline.models import build_model, variant
from pipeline.stages import download, split, tracking
from pipeline.team.stack import free_port

STARTED = datetime(2026, 12, 7, 14, 2, 59)
UNET = {"name": "unet", "width": 8, "depth": 4, "batch_norm": False}
VAE = {"name": "vae", "width": 16, "depth": 4, "latent_dim": 64, "beta": 0.5}


def _tiny_model():
    return build_model("cae", (16, 16, 1), {"width": 4, "depth": 1, "latent_dim": 4})


def _models_of(run_id: str) -> list:
    experiment = MlflowClient().get_run(run_id).info.experiment_id
    return [
        m
        for m in mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")
        if m.source_run_id == run_id
    ]


def _train_run(settings: Settings) -> str:
    model = variant(settings.model.model_dump())
    with tracking.new_model_run(settings, "abc123", settings.paths.run_file("train"), model):
        for epoch, loss in enumerate([0.3, 0.2, 0.1]):
            mlflow.log_metric("loss", loss, step=epoch)
        mlflow.log_param("precision", "mixed_bfloat16")  # as train records what it resolved
    return read_json(settings.paths.run_file("train"))["run_id"]


def test_later_stages_add_to_the_run_of_the_model(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    run_id = _train_run(settings)
    with tracking.model_run(settings, "calibrate", _tiny_model()) as resumed:
        mlflow.log_metric("threshold", 0.5)
    assert resumed == run_id == read_json(settings.paths.run_file("calibrate"))["run_id"]
    run = MlflowClient().get_run(run_id)
    assert run.data.metrics["threshold"] == 0.5
    assert run.data.params["threshold.k"] == "1.0"
    assert run.data.tags["stages"] == "train,calibrate"
    assert run.data.tags["data_hash"] == "abc123" and run.data.tags["git_commit"]


def test_another_thread_count_reopens_the_run_instead_of_forking(
    make_settings: Callable[..., Settings],
) -> None:
    run_id = _train_run(make_settings())
    other = make_settings("runtime.threads=1")
    with tracking.model_run(other, "calibrate", _tiny_model()) as resumed:
        pass
    assert resumed == run_id


def test_a_changed_config_forks_a_run_with_the_model_and_its_history(
    make_settings: Callable[..., Settings],
) -> None:
    run_id = _train_run(make_settings())
    changed = make_settings("threshold.k=2")
    with tracking.model_run(changed, "calibrate", _tiny_model()) as fork:
        pass
    assert fork != run_id and len(_models_of(fork)) == 1
    client = MlflowClient()
    run = client.get_run(fork)
    assert run.data.params["threshold.k"] == "2.0"
    assert run.data.params["precision"] == "mixed_bfloat16"  # how the model it carries was trained
    assert run.data.tags["forked_from"] == run_id and run.data.tags["changed_params"] == "threshold.k"
    assert [m.value for m in client.get_metric_history(fork, "loss")] == [0.3, 0.2, 0.1]
    assert client.get_run(run_id).data.params["threshold.k"] == "1.0"  # the original is untouched


def test_environment_tracking_uri_wins(make_settings: Callable[..., Settings], monkeypatch, tmp_path) -> None:
    settings = make_settings()
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.setup(settings.mlflow)
    assert mlflow.get_tracking_uri() == uri
    tracking.setup(settings.mlflow)  # the user's URI, not mistaken for the one MLflow exported
    assert mlflow.get_tracking_uri() == uri


def test_config_store_is_used_again_after_mlflow_exported_it(
    make_settings: Callable[..., Settings], tmp_path
) -> None:
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; that must not pin later setups to it."""
    other = f"sqlite:///{tmp_path / 'other.db'}"
    first, second = make_settings(), make_settings(f"mlflow.tracking_uri={other}")
    tracking.setup(first.mlflow)
    tracking.setup(second.mlflow)
    assert mlflow.get_tracking_uri() == other


def test_local_experiments_keep_artifacts_under_the_artifact_root(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    tracking.setup(settings.mlflow)
    location = mlflow.get_experiment(tracking.experiment_id("x", settings.mlflow)).artifact_location
    assert location == (settings.mlflow.artifact_root / "x").resolve().as_uri()


def test_a_tracking_server_that_does_not_answer_fails_at_once_naming_it(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed port: one line naming the server within seconds, not MLflow's minutes of retries; the
    retry bounds are set for later requests, but a bound the user set stays theirs."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in tracking.HTTP_BOUNDS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    start = time.monotonic()
    with pytest.raises(ServiceError, match=rf"^tracking server {re.escape(uri)} is not reachable \(.+\)$"):
        tracking.setup(make_settings().mlflow)
    assert time.monotonic() - start < 5
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """The time runs open at, for their names: STARTED until a test sets another."""
    now = [STARTED]

    class Clock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:
            return now[0]

    monkeypatch.setattr(tracking, "datetime", Clock)
    return now


@pytest.mark.parametrize(
    ("model", "data", "expected"),
    [
        (UNET, ["data=local", "data.path={folder}"], "unet-w8 · local:brain-ct · 2026-12-07 14:02"),
        (VAE, ["data=synthetic"], "vae-z64-beta0.5 · synthetic · 2026-12-07 14:02"),
        (UNET, ["data=synthetic_volumes"], "unet-w8 · synthetic_volumes:120p · 2026-12-07 14:02"),
        (VAE, ["data=kaggle"], "vae-z64-beta0.5 · kaggle · 2026-12-07 14:02"),
    ],
)
def test_a_run_name_says_the_model_variant_the_data_and_the_start(
    model: dict, data: list[str], expected: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    folder = tmp_path / "brain-ct"
    folder.mkdir()
    params = make_settings(*(o.format(folder=folder) for o in data), base=()).flat_params()
    assert tracking.run_name(variant(model), params, STARTED) == expected


def test_a_models_run_is_named_when_train_opens_it_and_a_fork_when_it_forks(
    make_settings: Callable[..., Settings], clock: list[datetime]
) -> None:
    settings = make_settings()
    run_id = _train_run(settings)
    clock[0] = datetime(2026, 12, 7, 14, 9)
    with tracking.model_run(settings, "calibrate", _tiny_model()):
        pass
    with tracking.model_run(make_settings("threshold.k=2"), "evaluate", _tiny_model()) as fork:
        pass
    assert mlflow.get_run(run_id).info.run_name == "unet-w4 · synthetic · 2026-12-07 14:02"
    assert mlflow.get_run(fork).info.run_name == "unet-w4 · synthetic · 2026-12-07 14:09"


def test_a_sweeps_job_is_named_with_its_number_also_when_it_failed_before_its_run(
    make_settings: Callable[..., Settings], clock: list[datetime]
) -> None:
    settings = make_settings()
    with tracking.tagged({"sweep_job": "3"}):
        run_id = _train_run(settings)
    tracking.record_failure(
        settings.mlflow, settings.flat_params(), {"sweep_job": "4"}, ValueError("bad"), "unet-w8"
    )
    failed = MlflowClient().search_runs(
        [mlflow.get_run(run_id).info.experiment_id], filter_string="attributes.status = 'FAILED'"
    )
    assert mlflow.get_run(run_id).info.run_name == "unet-w4 · synthetic · 2026-12-07 14:02 · job 3"
    assert [run.info.run_name for run in failed] == ["unet-w8 · synthetic · 2026-12-07 14:02 · job 4"]


def test_the_data_stages_runs_are_named_by_stage_data_start_and_data_hash(
    make_settings: Callable[..., Settings], clock: list[datetime]
) -> None:
    settings = make_settings()
    download.run(settings)
    split.run(settings)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.mlflow.data_experiment).experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    data_hash = read_json(settings.paths.reports / "data" / "download.json")["data_hash"]
    assert [run.info.run_name for run in runs] == [
        f"{stage} · synthetic · 2026-12-07 14:02 · {data_hash}" for stage in ("download", "split")
    ]


def test_the_users_run_name_wins(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_RUN_NAME", "wider unet, take 2")
    settings = make_settings()
    model_run = _train_run(settings)
    with tracking.data_run(settings, "split", {}):
        tracking.name_data_run("abc123")
        data_run = mlflow.active_run().info.run_id
    assert {mlflow.get_run(run).info.run_name for run in (model_run, data_run)} == {"wider unet, take 2"}
    assert mlflow.get_run(data_run).data.tags["data_hash"] == "abc123"
