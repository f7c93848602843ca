"""Searches spread over processes, as a team runs them: two Optuna workers started with the same command
share one study in PostgreSQL, and a multirun's jobs run on a local Ray cluster. Every service listens
on 127.0.0.1 only, is started and stopped here, and every wait is bounded."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.core.errors import ServiceError
from pipeline.core.params import ROOT
from pipeline.team import stack

pytestmark = pytest.mark.slow

SMOKE = ["experiment=smoke"]
TIMEOUT = 600  # seconds for a whole sweep of smoke pipelines (about a minute each on 2 cores)
RAY = Path(sys.executable).parent / "ray"


def _pipeline(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *overrides, *SMOKE]


def _env(**extra: str) -> dict[str, str]:
    # Ray on 127.0.0.1 only: without this it takes the machine's outward address, even when told 127.0.0.1
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **extra}


def _runs(client: MlflowClient, experiment: str = "brain-ct-anomaly") -> list[Run]:
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def _database(url: str, name: str) -> str:
    """A new database `name` on the server of SQLAlchemy URL `url`: its URL."""
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return sqlalchemy.make_url(url).set(database=name).render_as_string(hide_password=False)


def _errors(logs: list[Path]) -> str:
    """The lines of the workers' logs that report an error: what a failed assertion shows."""
    return "\n".join(line for log in logs for line in log.read_text().splitlines() if "rror" in line)


def test_two_workers_share_one_optuna_study(tmp_path: Path) -> None:
    """Each worker runs its 2 trials: 4 in the study, none drawn twice (the sampler is unseeded in a
    shared study), each an MLflow run with the trial's parameters."""
    try:
        stack.pg_program("initdb")
    except ServiceError as missing:
        pytest.skip(str(missing))
    with stack.postgres(tmp_path / "pg") as mlflow_url:
        study_url = _database(mlflow_url, "optuna")  # not MLflow's: both keep an alembic_version table
        MlflowClient(mlflow_url).search_experiments()  # its tables, as a tracking server makes them at start
        command = _pipeline(
            "hparams_search=optuna_ae",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage='{study_url}'",
            "hydra.sweeper.study_name=shared",
        )
        logs = [tmp_path / f"worker{n}.log" for n in (1, 2)]
        with contextlib.ExitStack() as files:
            workers = [
                subprocess.Popen(
                    [*command, f"hydra.sweep.dir={log.stem}"],
                    cwd=tmp_path,
                    env=_env(MLFLOW_TRACKING_URI=mlflow_url),
                    stdout=files.enter_context(log.open("w")),
                    stderr=subprocess.STDOUT,
                )
                for log in logs
            ]
            codes = [worker.wait(timeout=TIMEOUT) for worker in workers]
        assert codes == [0, 0], _errors(logs)

        trials = optuna.load_study(study_name="shared", storage=study_url).trials
        runs = _runs(MlflowClient(mlflow_url))

    assert [trial.state.name for trial in trials] == ["COMPLETE"] * 4, _errors(logs)
    drawn = {tuple(sorted(trial.params.items())) for trial in trials}
    assert len(drawn) == 4
    assert len(runs) == 4 and all(run.info.status == "FINISHED" for run in runs)
    logged = {float(run.data.params["train.learning_rate"]) for run in runs}
    assert logged == {trial.params["train.learning_rate"] for trial in trials}
    assert {Path(run.data.tags["sweep"]).name for run in runs} == {"worker1", "worker2"}


@contextlib.contextmanager
def _ray_head(folder: Path) -> Iterator[str]:
    """A one-node Ray cluster on 127.0.0.1, its workers in `folder` (where jobs then run), until the
    block ends: its address."""
    port = stack.free_port()
    address = f"127.0.0.1:{port}"
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths have a limit
    log = (folder / "ray.log").open("wb")
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1"]
        + ["--num-cpus=2", "--object-store-memory=100000000", "--include-dashboard=false"]
        + ["--disable-usage-stats", f"--temp-dir={temp}"],
        cwd=folder,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        status = [str(RAY), "status", f"--address={address}"]
        while subprocess.run(status, env=_env(), capture_output=True, check=False).returncode:
            if head.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Ray did not start: {(folder / 'ray.log').read_text()[-3000:]}")
            time.sleep(1)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_multirun_jobs_run_on_a_local_ray_cluster(tmp_path: Path) -> None:
    """Two jobs on Ray at once: each one MLflow run, in a Ray worker, sharing one download and split."""
    with _ray_head(tmp_path) as address:
        sweep = subprocess.run(
            _pipeline(
                "-m",
                "hydra/launcher=ray_cluster",
                f"hydra.launcher.ray.init.address={address}",
                "model=cae,vae",
                "hydra.sweep.dir=sweep",
            ),
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert sweep.returncode == 0, sweep.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = _runs(client)
    assert sorted(run.data.tags["model"] for run in runs) == ["cae", "vae"]
    assert all(run.info.status == "FINISHED" and "val_roc_auc" in run.data.metrics for run in runs)
    assert sorted(run.data.tags["sweep_job"] for run in runs) == ["0", "1"]
    assert len({run.data.tags["pid"] for run in runs}) == 2  # two Ray workers, not the sweep's process
    assert len(_runs(client, "brain-ct-data")) == 2  # one download and one split for both jobs
