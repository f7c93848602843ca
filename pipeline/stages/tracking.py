"""MLflow conventions of the pipeline.

`download` and `split` each log a run of their own in the data experiment. A trained model is one
run in the model experiment: `train` opens it and writes its id to a run file (a DVC output);
`calibrate` and `evaluate` reopen it from there and add to it. If one of them runs with a config
that differs from the one the run recorded (say `threshold.k` changed, so DVC reruns only
calibrate and evaluate), it forks a new run carrying the model, its params and its training curves,
so every run's params describe exactly how its numbers were made.

A run's name says what ran, on which data, when (`run_name`): `unet-w8 · local:brain-ct · 2026-12-07 14:02`,
a sweep's job number after it, a data run's stage first and its data's hash after it; the user's
MLFLOW_RUN_NAME, where set, names every run the pipeline opens instead.

A run that ends with an error is FAILED with an `error` tag; one stopped by SIGINT or SIGTERM is KILLED
with the reason. Every run records the host and process that opened it (`pipeline.core.lifecycle`), and
opening a run marks KILLED the runs of its experiment left RUNNING by a process that is gone (SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePath

import keras
import mlflow
import numpy as np
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipeline.core import lifecycle
from pipeline.core.config import MlflowConfig, Settings
from pipeline.core.errors import ServiceError
from pipeline.core.io import read_json, write_json
from pipeline.core.params import ROOT
from pipeline.stages import MODEL_STAGES

MAX_PARAMS_PER_BATCH = 100
LOCAL_SCHEMES = ("sqlite:", "file:")
_uri_set_here: str | None = None  # the config's URI, which mlflow.set_tracking_uri exports itself
_extra_tags: dict[str, str] = {}
# MLflow retries a tracking server that does not answer for minutes (7 retries, backoff factor 2, 120 s
# per request): bounds that fail a stage within seconds, unless the user set their own
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
PROBE_TIMEOUT = 10.0  # seconds: the artifact check waits out the server's own retries of its store
_answering: set[str] = set()  # tracking servers probed in this process
RUN_NAME_VARIABLE = "MLFLOW_RUN_NAME"  # the user's name for the runs, instead of `run_name`'s
NAME_SEPARATOR = " · "
NAME_TIME = "%Y-%m-%d %H:%M"
# What a run's name says of its data besides the source (a source not listed: the source alone), from
# the run's params
DATA_DETAILS: dict[str, Callable[[Mapping[str, str]], str]] = {
    "local": lambda params: PurePath(params["data.path"]).name,  # the folder or .zip the user named
    "synthetic_volumes": lambda params: f"{params['data.patients']}p",  # patients
}


def setup(config: MlflowConfig) -> None:
    """Point MLflow at the user's MLFLOW_TRACKING_URI if set, else at the config's (local SQLite) store;
    a tracking server must answer first (`probe`)."""
    global _uri_set_here
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    from_user = from_env if from_env and from_env != _uri_set_here else None
    uri = from_user or config.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith(("http://", "https://")):
        for name, value in HTTP_BOUNDS.items():
            os.environ.setdefault(name, value)
        probe(uri)
    mlflow.set_tracking_uri(uri)
    _uri_set_here = None if from_user else uri


def probe(uri: str) -> None:
    """Raise ServiceError, naming `uri`, unless the tracking server answers and, where it proxies the
    artifact store, reaches that store: a stage fails before its work, not in MLflow's retries after it."""
    if uri in _answering:
        return
    base = uri.rstrip("/")
    for url in (f"{base}/health", f"{base}/api/2.0/mlflow-artifacts/artifacts?path="):
        try:
            urllib.request.urlopen(url, timeout=PROBE_TIMEOUT).close()
        except urllib.error.HTTPError as err:  # it answers: an error status is a store failure only here
            if err.code == 500 and "mlflow-artifacts" in url:
                raise ServiceError(
                    f"tracking server {uri} cannot reach its artifact store (HTTP 500 listing it; "
                    "see the server's log)"
                ) from None
        except OSError as err:  # refused, timed out, unknown host
            reason = getattr(err, "reason", err)
            raise ServiceError(f"tracking server {uri} is not reachable ({reason})") from None
    _answering.add(uri)


def experiment_id(name: str, config: MlflowConfig) -> str:
    """The experiment's id, creating it with artifacts under `artifact_root` for a local store
    (a tracking server keeps its own artifact store)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = mlflow.get_tracking_uri().startswith(LOCAL_SCHEMES)
    location = (config.artifact_root / name).resolve().as_uri() if local else None
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def log_params(params: dict[str, str]) -> None:
    items = sorted(params.items())
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        mlflow.log_params(dict(items[start : start + MAX_PARAMS_PER_BATCH]))


def pinned(packages: tuple[str, ...]) -> list[str]:
    """pip requirements pinned to the installed versions (MLflow's own inference loads the model in a
    subprocess: slow, and blind to the pipeline's custom layers)."""
    requirements = []
    for package in packages:
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            requirements.append(package)
    return requirements


def log_model(model: keras.Model) -> None:
    """Log a Keras model into the active run, with its input/output signature.

    A signature, not `input_example`: mlflow.keras 3.17 writes the example before creating the
    model folder and fails (FileNotFoundError .../model/input_example.json).
    """
    example = np.zeros((1, *model.input_shape[1:]), dtype=np.float32)
    mlflow.keras.log_model(
        model,
        name="model",
        pip_requirements=pinned(("tensorflow", "keras", "numpy")),
        signature=infer_signature(example, model.predict(example, verbose=0)),
    )


def run_name(what: str, params: Mapping[str, str], started: datetime, *details: str) -> str:
    """What ran (a model variant, `unet-w8`, or a data stage), on which data (from the run's params:
    `local:brain-ct`, `synthetic_volumes:120p`, `synthetic`), started when (to the minute), then any
    `details`: the MLflow run list and Compare view tell runs apart without opening them."""
    source = params["data.source"]
    detail = DATA_DETAILS.get(source)
    data = f"{source}:{detail(params)}" if detail else source
    return NAME_SEPARATOR.join((what, data, started.strftime(NAME_TIME), *details))


def _name(what: str, params: Mapping[str, str], *details: str) -> str:
    """The user's MLFLOW_RUN_NAME, else `run_name` for a run starting now."""
    return os.environ.get(RUN_NAME_VARIABLE) or run_name(what, params, datetime.now(), *details)


def _job(tags: Mapping[str, str]) -> tuple[str, ...]:
    """The job number of a sweep's run (its `tags`), for its name: the jobs of a sweep start alike."""
    return (f"job {tags['sweep_job']}",) if "sweep_job" in tags else ()


@contextlib.contextmanager
def tagged(tags: dict[str, str]) -> Iterator[None]:
    """Add `tags` to every run the stages open inside the block (e.g. the sweep a run belongs to)."""
    previous = dict(_extra_tags)
    _extra_tags.update(tags)
    try:
        yield
    finally:
        _extra_tags.clear()
        _extra_tags.update(previous)


def _error_tag(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text[:5000]  # MLflow tag values hold at most 5000 characters


@contextlib.contextmanager
def _recording_errors() -> Iterator[None]:
    """Inside an active run: tag the run with the error that ends it (MLflow then marks it FAILED), or
    end it KILLED when a signal stopped the stage."""
    try:
        yield
    except BaseException as err:
        mlflow.set_tag("error", _error_tag(err))
        if isinstance(err, lifecycle.STOPPED):
            mlflow.end_run("KILLED")
        raise


def _close_orphans(experiment: str, resumed: str | None) -> None:
    """Mark KILLED the runs of `experiment` still RUNNING whose process is gone (but the one about to be
    resumed: it goes on)."""
    client = MlflowClient()
    running = client.search_runs(
        [experiment], filter_string=f"attributes.status = 'RUNNING' and tags.host = '{lifecycle.HOST}'"
    )
    for run in running:
        if run.info.run_id != resumed and lifecycle.is_gone(run.data.tags):
            client.set_tag(
                run.info.run_id,
                "error",
                f"process {run.data.tags['pid']} on {lifecycle.HOST} ended without closing the run (killed)",
            )
            client.set_terminated(run.info.run_id, "KILLED")


def _start_run(experiment: str, run_id: str | None = None, **kwargs: object) -> mlflow.ActiveRun:
    """Open a run in `experiment`, or resume run `run_id` of it, closing its orphans first."""
    _close_orphans(experiment, run_id)
    return mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment, **kwargs)


@contextlib.contextmanager
def data_run(settings: Settings, stage: str, params: dict[str, str]) -> Iterator[None]:
    """A run of its own for a data stage (download, split) in the data experiment, open for the whole
    stage so that a failure is recorded; `name_data_run` adds the data's hash to its name once known."""
    setup(settings.mlflow)
    experiment = experiment_id(settings.mlflow.data_experiment, settings.mlflow)
    name = _name(stage, settings.flat_params())
    with _start_run(experiment, run_name=name, tags=_tags(stage)), _recording_errors():
        log_params(params)
        yield


def name_data_run(data_hash: str) -> None:
    """Tag the active data run with the hash of the data it holds, and end its name with it (unless the
    user named it)."""
    tags = {"data_hash": data_hash}
    if not os.environ.get(RUN_NAME_VARIABLE):
        tags["mlflow.runName"] = NAME_SEPARATOR.join((mlflow.active_run().info.run_name, data_hash))
    mlflow.set_tags(tags)


def _tags(stage: str, data_hash: str | None = None) -> dict[str, str]:
    hashed = {"data_hash": data_hash} if data_hash else {}
    return {"stage": stage, "git_commit": git_commit(), **hashed, **lifecycle.owner(), **_extra_tags}


@contextlib.contextmanager
def new_model_run(settings: Settings, data_hash: str, run_file: Path, variant: str) -> Iterator[str]:
    """Open the run of a model being trained, named after its `variant` (`pipeline.models.variant`);
    its id goes to `run_file` once the block succeeds."""
    setup(settings.mlflow)
    params = settings.flat_params()
    with (
        _start_run(
            experiment_id(settings.mlflow.experiment, settings.mlflow),
            run_name=_name(variant, params, *_job(_extra_tags)),
            tags={
                **_tags("train", data_hash),
                "stages": "train",
                "model": settings.model.name,
                "variant": variant,
            },
        ) as run,
        _recording_errors(),
    ):
        log_params(params)
        yield run.info.run_id
    write_json(run_file, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id})


@contextlib.contextmanager
def model_run(settings: Settings, stage: str, model: keras.Model) -> Iterator[str]:
    """Reopen the model's run for `stage` (the run the stage before it left in its run file), or fork
    it (logging `model` into the fork, named like a new run of it) when the config changed since the run
    was logged."""
    setup(settings.mlflow)
    client = MlflowClient()
    before = MODEL_STAGES[MODEL_STAGES.index(stage) - 1]
    previous = client.get_run(read_json(settings.paths.run_file(before))["run_id"])
    run_file = settings.paths.run_file(stage)
    params = settings.flat_params()
    changed = {
        k
        for k, v in params.items()  # `runtime` changes how a stage runs, not what it makes
        if previous.data.params.get(k, v) != v and not k.startswith("runtime.")
    }
    stages = f"{previous.data.tags.get('stages', '')},{stage}".strip(",")
    if not changed:
        with _start_run(previous.info.experiment_id, run_id=previous.info.run_id), _recording_errors():
            mlflow.set_tags({**_tags(stage), "stages": stages})
            log_params({k: v for k, v in params.items() if k not in previous.data.params})
            run_id = previous.info.run_id
            yield run_id
    else:
        inherited = {k: v for k, v in previous.data.tags.items() if not k.startswith("mlflow.")}
        # a run logged before runs had variants: the model's name
        variant = previous.data.tags.get("variant", settings.model.name)
        with (
            _start_run(
                previous.info.experiment_id,
                run_name=_name(variant, params, *_job(_extra_tags)),
                tags={
                    **inherited,
                    **_tags(stage),
                    "stages": stages,
                    "forked_from": previous.info.run_id,
                    "changed_params": ",".join(sorted(changed)),
                },
            ) as run,
            _recording_errors(),
        ):
            log_params(previous.data.params | params)  # with what training recorded of itself (precision)
            for key in previous.data.metrics:
                for metric in client.get_metric_history(previous.info.run_id, key):
                    mlflow.log_metric(key, metric.value, step=metric.step, timestamp=metric.timestamp)
            log_model(model)
            run_id = run.info.run_id
            yield run_id
    write_json(run_file, {"run_id": run_id, "experiment_id": previous.info.experiment_id})


def record_failure(
    config: MlflowConfig, params: dict[str, str], tags: dict[str, str], error: BaseException, variant: str
) -> None:
    """Make a failed job visible in the model experiment: mark FAILED the runs it opened (found by
    `tags`), or log a FAILED run with its params, named after the model `variant`, when it failed
    before opening one."""
    setup(config)
    client = MlflowClient()
    message = _error_tag(error)
    experiment = experiment_id(config.experiment, config)
    query = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
    runs = client.search_runs([experiment], filter_string=query)
    for run in runs:
        client.set_tag(run.info.run_id, "error", message)
        client.set_terminated(run.info.run_id, "FAILED")
    if not runs:
        mlflow.start_run(
            experiment_id=experiment,
            run_name=_name(variant, params, *_job(tags)),
            tags={
                **tags,
                "stage": "failed",
                "git_commit": git_commit(),
                "error": message,
                "model": params.get("model.name", "unknown"),
                "variant": variant,
            },
        )
        try:
            log_params(params)
        finally:
            mlflow.end_run("FAILED")
