"""The team stack (`pipeline.stack`): PostgreSQL, SeaweedFS's S3 gateway and `mlflow server` on loopback
ports, in a temporary folder. A DVC pipeline logs to it (its runs in PostgreSQL, its artifacts in the
object store), the registered detector predicts and serves from it, DVC moves the workspace between two
clones through its object store, and a stage fails at once, keeping its outputs, when the tracking server
or its store is down."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

from bench.workspace import copy_project, run
from pipeline import stack as team
from pipeline.errors import ServiceError
from tests.conftest import TINY, served

DETECTOR = "models:/brain-ct-anomaly-detector@current"


def _missing() -> str | None:
    """Why the stack cannot start here: PostgreSQL or SeaweedFS not found (None when both are)."""
    try:
        team.pg_program("initdb")
        team.weed_program()
    except ServiceError as err:
        return str(err)
    return None


MISSING = _missing()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(MISSING is not None, reason=f"no team stack: {MISSING}")]


def _stack(folder: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.stack", command, "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[team.Stack, str]]:
    """`python -m pipeline.stack up` in a temporary folder, `down` after the module: (the stack, the
    exports `up` printed)."""
    folder = tmp_path_factory.mktemp("stack")
    up = _stack(folder, "up")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield team.load(folder), up.stdout
    finally:
        down = _stack(folder, "down")
        assert down.returncode == 0, down.stderr[-3000:]


@pytest.fixture(scope="module")
def stack(started: tuple[team.Stack, str]) -> team.Stack:
    return started[0]


def _env(stack: team.Stack) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": stack.tracking_uri}


@pytest.fixture(scope="module")
def project(stack: team.Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository of the project with tiny params, after `dvc repro` logging to the stack."""
    root = copy_project(tmp_path_factory.mktemp("project"), TINY)
    run(root, "dvc", "repro", env=_env(stack))
    return root


def test_up_again_says_so_and_prints_the_same_exports(started: tuple[team.Stack, str]) -> None:
    stack, exports = started
    assert f"export MLFLOW_TRACKING_URI={stack.tracking_uri}" in exports.splitlines()
    again = _stack(stack.folder, "up")
    assert again.returncode == 0 and again.stdout == exports
    assert "already running" in again.stderr
    status = _stack(stack.folder, "status").stdout
    assert all(re.search(rf"^{name} +running ", status, re.M) for name in team.SERVICES), status


def test_a_pipeline_logs_its_runs_to_postgresql_and_its_artifacts_to_the_object_store(
    project: Path, stack: team.Stack
) -> None:
    import psycopg2

    run_id = json.loads((project / "reports/package/run.json").read_text())["run_id"]
    logged = MlflowClient(stack.tracking_uri).get_run(run_id)
    assert logged.info.status == "FINISHED" and "test_roc_auc" in logged.data.metrics
    assert not (project / "mlruns").exists()  # nothing went to the local store
    connection = psycopg2.connect(
        host=team.HOST, port=stack.ports["postgres"], user=team.PG_USER, dbname=team.DATABASE
    )
    with connection, connection.cursor() as cursor:
        cursor.execute("select run_uuid, status, name from runs")
        runs = {uuid: (status, name) for uuid, status, name in cursor.fetchall()}
    connection.close()
    assert runs[run_id][0] == "FINISHED"
    assert {name.split("-")[0] for _, name in runs.values()} >= {"download", "split"}
    pages = stack.s3_client().get_paginator("list_objects_v2").paginate(Bucket=team.BUCKET, Prefix="mlflow/")
    keys = {item["Key"] for page in pages for item in page.get("Contents", [])}
    experiment = logged.info.experiment_id
    assert f"mlflow/{experiment}/{run_id}/artifacts/evaluate/roc_pr.png" in keys
    assert any(key.endswith("/artifacts/MLmodel") for key in keys)  # the logged models


def test_the_registered_detector_predicts_and_serves_from_the_server(
    project: Path, stack: team.Stack
) -> None:
    """`predict --model models:/...@current` and `mlflow models serve` of it, both through the tracking
    server, score as evaluate did."""
    run_id = json.loads((project / "reports/package/run.json").read_text())["run_id"]
    version = MlflowClient(stack.tracking_uri).get_model_version_by_alias(
        "brain-ct-anomaly-detector", "current"
    )
    assert version.run_id == run_id
    evaluated = pd.read_csv(project / "reports/evaluate/scores.csv")
    run(
        project,
        sys.executable,
        "-m",
        "pipeline.predict",
        "data/raw",
        "--out",
        "remote.csv",
        "--model",
        DETECTOR,
        env=_env(stack),
    )
    predicted = pd.read_csv(project / "remote.csv")
    predicted["path"] = predicted["path"].str.removeprefix("data/raw/")
    both = evaluated.merge(predicted, on="path", suffixes=("", "_predicted"))
    assert len(both) == len(evaluated) and (both["run_id"] == run_id).all()
    np.testing.assert_allclose(both["score_predicted"], both["score"], rtol=1e-5)

    import base64

    sample = evaluated.groupby("class").head(1)
    rows = [
        [base64.b64encode((project / "data/raw" / path).read_bytes()).decode()] for path in sample["path"]
    ]
    with served(DETECTOR, _env(stack)) as url:
        answer = requests.post(
            f"{url}/invocations", json={"dataframe_split": {"columns": ["image"], "data": rows}}, timeout=120
        )
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose([p["score"] for p in answer.json()["predictions"]], sample["score"], rtol=1e-5)


def test_dvc_push_and_pull_move_the_workspace_to_a_second_clone(
    project: Path, started: tuple[team.Stack, str], tmp_path: Path
) -> None:
    """The DVC remote commands `up` prints, in each clone; `dvc push` from the first, `dvc pull` in the
    second: its `dvc repro` reruns nothing (but `publish`, which always runs) and its metrics are the
    first's."""
    stack, exports = started
    remote = [shlex.split(line.lstrip("# ")) for line in exports.splitlines() if line.startswith("#   dvc ")]
    assert len(remote) == 4
    for command in remote:
        run(project, *command)
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "dvc repro")
    assert "team" not in (project / ".dvc/config").read_text()  # --local: the remote stays out of git
    run(project, "dvc", "push", env=_env(stack))
    pages = stack.s3_client().get_paginator("list_objects_v2").paginate(Bucket=team.BUCKET, Prefix="dvc/")
    assert sum(len(page.get("Contents", [])) for page in pages) > 10

    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(project), str(clone))
    for command in remote:
        run(clone, *command)
    run(clone, "dvc", "pull", env=_env(stack))
    output = run(clone, "dvc", "repro", env=_env(stack))
    assert re.findall(r"Running stage '(\w+)'", output) == ["publish"], output
    for report in ("reports/evaluate/metrics.json", "reports/calibrate/threshold.json"):
        assert (clone / report).read_text() == (project / report).read_text()
    assert (clone / "models/model.keras").read_bytes() == (project / "models/model.keras").read_bytes()


def _split(project: Path, tracking_uri: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run stage `split` as DVC would, logging to `tracking_uri`: (the process, its seconds)."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.split", "--config-dir", ".", "--config-name", "params"],
        cwd=project,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done, time.monotonic() - start


def test_a_stage_fails_at_once_naming_the_server_when_it_or_its_store_is_down(
    project: Path, stack: team.Stack
) -> None:
    """A closed port, then the stack's server with its object store stopped: each time one line naming
    the server, within seconds of the stage's start (not MLflow's minutes of retries), the stage's
    outputs as they were. Runs last: it leaves the store stopped (`down` stops the rest)."""
    baseline = _split(project, stack.tracking_uri)[1]  # the stage's own time, starting Python included
    splits = project / "data/splits"
    before = {path.name: path.read_bytes() for path in splits.iterdir()}

    closed = f"http://127.0.0.1:{team.free_port()}"
    done, seconds = _split(project, closed)
    assert done.returncode == 1, done.stderr[-3000:]
    assert re.fullmatch(
        rf"error: tracking server {re.escape(closed)} is not reachable \(.+\)",
        done.stderr.strip().splitlines()[-1],
    )
    assert seconds < baseline + 10

    team.stop(stack.folder, "seaweedfs")
    done, seconds = _split(project, stack.tracking_uri)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking server {stack.tracking_uri} cannot reach its artifact store"), (
        last
    )
    assert seconds < baseline + 15
    assert {path.name: path.read_bytes() for path in splits.iterdir()} == before
