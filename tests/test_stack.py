"""The team stack (`pipeline.team.stack`): PostgreSQL, SeaweedFS's S3 gateway and `mlflow server` on loopback
ports, in a temporary folder. A DVC pipeline logs to it (its runs in PostgreSQL, its artifacts in the
object store), the registered detector predicts and serves from it, DVC moves the workspace between two
clones through its object store, and a stage fails at once, keeping its outputs, when the tracking server
or its store is down. The stack is its owner's alone: PostgreSQL asks for the password of `stack.json`,
which only the owner reads, nothing listens beyond 127.0.0.1, SeaweedFS's own ports serve nothing without
a JWT or a certificate of the stack, and a cluster or a stack folder of the earlier version, which trusted
every local account, is secured in place."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest
import requests
from mlflow.tracking import MlflowClient

from bench.workspace import copy_project, run
from pipeline.core.errors import ServiceError
from pipeline.team import stack as team
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
        [sys.executable, "-m", "pipeline.team.stack", command, "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[team.Stack, str]]:
    """`python -m pipeline.team.stack up` in a temporary folder, `down` after the module: (the stack, the
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


def _login(port: int, password: str | None, database: str = team.DATABASE) -> dict[str, Any]:
    """psycopg2.connect's arguments for the role `mlflow` on `port` (without a password when None)."""
    return {"host": team.HOST, "port": port, "user": team.PG_USER, "password": password, "dbname": database}


@pytest.fixture
def no_saved_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither PGPASSWORD nor a password file: libpq sends only the password it is given."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))


def _refused(port: int, password: str | None, database: str = team.DATABASE) -> str:
    """Why PostgreSQL on `port` refuses the role `mlflow` with `password` (fails when it lets it in)."""
    import psycopg2

    with pytest.raises(psycopg2.OperationalError) as refused:
        psycopg2.connect(**_login(port, password, database)).close()
    return str(refused.value)


def _processes(stack: team.Stack) -> dict[str, list[psutil.Process]]:
    """Each service's process and all its descendants."""
    processes = {}
    for name in team.SERVICES:
        process = psutil.Process(json.loads((stack.folder / f"{name}.pid").read_text())["pid"])
        processes[name] = [process, *process.children(recursive=True)]
    return processes


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


@pytest.mark.usefixtures("no_saved_password")
def test_postgresql_lets_in_only_with_the_password_of_stack_json(stack: team.Stack) -> None:
    import psycopg2

    port = stack.ports["postgres"]
    assert "no password supplied" in _refused(port, None)
    assert "password authentication failed" in _refused(port, "not-" + stack.pg_password)
    with contextlib.closing(psycopg2.connect(**_login(port, stack.pg_password))) as connection:
        assert connection.server_version > 0
    saved = json.loads((stack.folder / "stack.json").read_text())
    assert saved["pg_password"] == stack.pg_password and len(stack.pg_password) >= 32
    assert (stack.folder / "postgres/pg_hba.conf").read_text() == team.PG_HBA  # no `trust` left


def test_the_stack_folder_and_its_credentials_are_the_owner_s_alone(stack: team.Stack) -> None:
    assert stat.S_IMODE(stack.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((stack.folder / "tls").stat().st_mode) == 0o700
    keys = [f"tls/{name}.key" for name in team.WEED_TLS]
    for credentials in ("stack.json", "s3.json", "security.toml", *keys):
        assert stat.S_IMODE((stack.folder / credentials).stat().st_mode) == 0o600, credentials


def test_every_socket_the_stack_listens_on_is_on_127_0_0_1(stack: team.Stack) -> None:
    """PostgreSQL, SeaweedFS's servers and gRPC ports, the tracking server's workers: all loopback."""
    for name, processes in _processes(stack).items():
        listening = [
            connection.laddr
            for process in processes
            for connection in process.net_connections(kind="inet")
            if connection.status == psutil.CONN_LISTEN
        ]
        assert listening, name
        assert {address.ip for address in listening} == {team.HOST}, (name, listening)
        if name == "seaweedfs":  # master, volume, filer, S3: each an HTTP and a gRPC port, nothing else
            assert {address.port for address in listening} == {
                stack.ports[p] for p in ("s3", *team.WEED_PORTS)
            }


def test_no_password_nor_signing_key_is_on_a_command_line_nor_in_status(stack: team.Stack) -> None:
    """Every account of the machine reads every process's command line (`ps`)."""
    secrets = [stack.pg_password, *stack.weed_keys.values()]
    for process in psutil.process_iter(["cmdline"]):
        command_line = " ".join(process.info["cmdline"] or [])
        assert not any(secret in command_line for secret in secrets), process
    status = _stack(stack.folder, "status").stdout
    assert stack.pg_password not in status and f"{team.PG_USER}:***@" in status


def _keys(client: Any) -> set[str]:
    """The keys of the bucket's objects."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=team.BUCKET)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def _jwt(key: str, file_id: str) -> str:
    """A JWT for the file `file_id` as SeaweedFS signs them (HS256; claims `fid` and `exp`), with `key`."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = part(json.dumps({"fid": file_id, "exp": int(time.time()) + 60}).encode())
    signature = hmac.new(key.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{part(signature)}"


def test_seaweedfs_s_own_http_ports_serve_nothing_without_a_jwt_of_the_stack(stack: team.Stack) -> None:
    """The master and the filer serve no HTTP API (404; the master's asked for no credentials, and handed
    out write JWTs and deleted a bucket's data to whoever asked), the volume server reads and writes only
    with a JWT signed by a key of `stack.json` (401 without). An object written through S3 stays out of
    reach of all three; nothing is written through them."""
    client = stack.s3_client()
    client.put_object(Bucket=team.BUCKET, Key="probe/kept.txt", Body=b"kept")

    def answer(server: str, path: str, method: str = "GET", **options: Any) -> requests.Response:
        url = f"http://{team.HOST}:{stack.ports[server]}{path}"
        return requests.request(method, url, timeout=10, **options)

    for path in ("/dir/assign", "/dir/lookup?volumeId=1", "/dir/status", "/vol/status"):
        assert answer("master", path).status_code == 404, path
    for path in ("/", f"/buckets/{team.BUCKET}/", f"/buckets/{team.BUCKET}/probe/kept.txt"):
        assert answer("filer", path).status_code == 404, path
    upload = {"file": ("intruder.txt", b"intruder")}
    assert answer("filer", f"/buckets/{team.BUCKET}/probe/", "POST", files=upload).status_code == 404
    file_id = "3,01637037d6"
    assert answer("volume", f"/{file_id}").status_code == 401
    assert answer("volume", f"/{file_id}", "POST", files=upload).status_code == 401
    keys = team.load(stack.folder).weed_keys
    signed = {"Authorization": f"Bearer {_jwt(keys['jwt.signing.read'], file_id)}"}
    assert answer("volume", f"/{file_id}", headers=signed).status_code == 404  # let in: no such file
    forged = {"Authorization": f"Bearer {_jwt('not-' + keys['jwt.signing.read'], file_id)}"}
    assert answer("volume", f"/{file_id}", headers=forged).status_code == 401
    assert "probe/intruder.txt" not in _keys(client)


def _rpc(channel: Any) -> Any:
    """The status code of a call of a method no server has, on `channel` (UNIMPLEMENTED: the server let the
    client in)."""
    import grpc

    with channel:
        call = channel.unary_unary("/pipeline.Probe/Nothing", lambda x: x, lambda x: x)
        try:
            call(b"", timeout=10)
        except grpc.RpcError as error:
            return error.code()
    raise AssertionError("a method no server has answered")


def test_seaweedfs_s_grpc_ports_let_in_only_a_client_with_a_certificate_of_the_stack(
    stack: team.Stack, tmp_path: Path
) -> None:
    """Mutual TLS: the client certificate of `tls/` is let in; none, one of another CA (another stack's),
    or no TLS at all is refused."""
    grpc = pytest.importorskip("grpc")
    tls = stack.folder / "tls"
    authority = (tls / "ca.crt").read_bytes()
    team._issue_certificates(tmp_path)
    clients = {
        "the stack's": ((tls / "client.key").read_bytes(), (tls / "client.crt").read_bytes()),
        "another CA's": ((tmp_path / "client.key").read_bytes(), (tmp_path / "client.crt").read_bytes()),
        "none": (None, None),
    }
    for name in team.WEED_PORTS:
        if name.endswith(".grpc"):
            address = f"{team.HOST}:{stack.ports[name]}"
            codes = {
                client: _rpc(grpc.secure_channel(address, grpc.ssl_channel_credentials(authority, *pair)))
                for client, pair in clients.items()
            }
            codes["no TLS"] = _rpc(grpc.insecure_channel(address))
            unavailable = grpc.StatusCode.UNAVAILABLE
            assert codes == {
                "the stack's": grpc.StatusCode.UNIMPLEMENTED,
                "another CA's": unavailable,
                "none": unavailable,
                "no TLS": unavailable,
            }, name


def test_a_pipeline_logs_its_runs_to_postgresql_and_its_artifacts_to_the_object_store(
    project: Path, stack: team.Stack
) -> None:
    import psycopg2

    run_id = json.loads((project / "reports/package/run.json").read_text())["run_id"]
    logged = MlflowClient(stack.tracking_uri).get_run(run_id)
    assert logged.info.status == "FINISHED" and "test_roc_auc" in logged.data.metrics
    assert not (project / "mlruns").exists()  # nothing went to the local store
    with contextlib.closing(
        psycopg2.connect(**_login(stack.ports["postgres"], stack.pg_password))
    ) as connection:
        with connection, connection.cursor() as cursor:
            cursor.execute("select run_uuid, status, name from runs")
            runs = {uuid: (status, name) for uuid, status, name in cursor.fetchall()}
    assert runs[run_id][0] == "FINISHED"
    assert {name.split(" · ")[0] for _, name in runs.values()} >= {"download", "split"}
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


def test_a_stack_folder_of_the_earlier_version_gains_security_toml_at_its_next_up_keeping_its_data(
    stack: team.Stack,
) -> None:
    """A SeaweedFS running without security.toml (an earlier version's): `up` refuses to leave it so and
    says what to do. Stopped, with no signing keys in `stack.json` nor certificates, as the earlier version
    left its folder: `up` makes them, writes security.toml and starts it on the same data."""
    client = stack.s3_client()
    client.put_object(Bucket=team.BUCKET, Key="probe/before.txt", Body=b"kept")
    before = _keys(client)
    (stack.folder / "security.toml").unlink()
    refused = _stack(stack.folder, "up")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: the stack in {stack.folder} runs a SeaweedFS whose own ports let every local account in "
        "(an earlier version's): `down` it, then `up` starts it with security.toml"
    )

    team.stop(stack.folder, "seaweedfs")
    saved = json.loads((stack.folder / "stack.json").read_text())
    del saved["weed_keys"]
    (stack.folder / "stack.json").write_text(json.dumps(saved))
    shutil.rmtree(stack.folder / "tls")
    again = _stack(stack.folder, "up")
    assert again.returncode == 0, again.stderr[-3000:]
    keys = team.load(stack.folder).weed_keys
    assert set(keys) == set(team.WEED_JWT) and len(set(keys.values())) == len(keys)
    security = (stack.folder / "security.toml").read_text()
    assert all(f'key = "{key}"' in security for key in keys.values())
    assert stat.S_IMODE((stack.folder / "security.toml").stat().st_mode) == 0o600
    assert client.get_object(Bucket=team.BUCKET, Key="probe/before.txt")["Body"].read() == b"kept"
    assert _keys(client) == before
    filer = requests.get(f"http://{team.HOST}:{stack.ports['filer']}/", timeout=10)
    assert filer.status_code == 404


def _split(project: Path, tracking_uri: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run stage `split` as DVC would, logging to `tracking_uri`: (the process, its seconds)."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.split", "--config-dir", ".", "--config-name", "params"],
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


def test_credential_files_are_rewritten_private_whatever_mode_they_had(tmp_path: Path) -> None:
    credentials = tmp_path / "stack.json"
    credentials.write_text("{}")
    credentials.chmod(0o644)
    team._write_private(credentials, '{"secret": 1}')
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert credentials.read_text() == '{"secret": 1}' and [p.name for p in tmp_path.iterdir()] == [
        "stack.json"
    ]


def test_a_stack_json_of_the_earlier_version_gains_a_password_and_signing_keys_kept_from_then_on(
    tmp_path: Path,
) -> None:
    ports = {name: team.free_port() for name in ("postgres", "s3", "tracking", *team.WEED_PORTS)}
    earlier = {"ports": ports, "access_key": "KEY", "secret_key": "secret"}
    (tmp_path / "stack.json").write_text(json.dumps(earlier))
    stack = team._configure(tmp_path, {})
    saved = json.loads((tmp_path / "stack.json").read_text())
    assert saved == {**earlier, "pg_password": stack.pg_password, "weed_keys": stack.weed_keys}
    assert stack.pg_password and set(stack.weed_keys) == set(team.WEED_JWT)
    assert len(set(stack.weed_keys.values())) == len(team.WEED_JWT)
    assert stack.backend_uri == team.database_url(ports["postgres"], stack.pg_password)
    assert team._configure(tmp_path, {}) == stack  # kept at the next `up`


def _cluster_of_the_earlier_version(data: Path) -> None:
    """What the earlier version made: `initdb --auth=trust`; here with a table `kept` in database postgres."""
    init = [team.pg_program("initdb"), "-D", str(data), "-U", team.PG_USER, "--auth=trust"]
    subprocess.run(team._as_non_root(init), capture_output=True, check=True)
    single = [team.pg_program("postgres"), "--single", "-D", str(data), "postgres"]
    fill = "CREATE TABLE kept (n int);\nINSERT INTO kept VALUES (42);\n"
    subprocess.run(team._as_non_root(single), input=fill, text=True, capture_output=True, check=True)


@pytest.mark.usefixtures("no_saved_password")
def test_a_trusting_cluster_of_the_earlier_version_is_secured_in_place_keeping_its_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg2
    import sqlalchemy

    _cluster_of_the_earlier_version(tmp_path / "postgres")
    with team.postgres(tmp_path) as url:
        said = capsys.readouterr().err.strip().splitlines()
        login = sqlalchemy.make_url(url)
        assert "no password supplied" in _refused(login.port, None, "postgres")
        with contextlib.closing(
            psycopg2.connect(**_login(login.port, login.password, "postgres"))
        ) as connection:
            with connection, connection.cursor() as cursor:
                cursor.execute("select n from kept")
                assert cursor.fetchall() == [(42,)]
    assert said == [
        f"PostgreSQL in {tmp_path / 'postgres'} trusted every local account: now {team.PG_USER} logs in with "
        f"a password, from {team.HOST} only"
    ]
    assert (tmp_path / "postgres/pg_hba.conf").read_text() == team.PG_HBA
