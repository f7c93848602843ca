"""`python -m pipeline`: every stage (`pipeline.stages`) in one process (the code the DVC stages run),
as one Hydra app, so that Hydra sweeps whole pipelines:

    python -m pipeline -m model=cae,cae_bn,deep_cae,vae      # one MLflow run per variant
    python -m pipeline hparams_search=optuna                  # Optuna maximises validation ROC AUC

A job writes its model and reports under its Hydra output folder and its data under the sweep's folder,
in `data/<hash of the data settings>/`: the jobs that agree on those share one download and split, even
when they run at once in other processes (Ray), the first one preparing the data while the others wait.
None of them touches the DVC workspace (a single run keeps its data in `data/` of its own folder).
Runs go to the project's MLflow store, tagged with the sweep and the job; each run holds its packaged
detector, which is not registered (the registry alias stays on the DVC pipeline's) unless
`mlflow.register_detector=true` is given. A job that fails is marked
FAILED in MLflow and the sweep goes on with the next one; SIGTERM marks the job's run KILLED and ends
the sweep. Each run gets an output folder of its own (`outputs/<date>/<time>-<token>`, conf/config.yaml),
so runs started in the same second never share one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from pathlib import Path

import hydra
import keras
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline.core import hardware, lifecycle
from pipeline.core.config import MlflowConfig, Settings, flatten
from pipeline.core.errors import PipelineError
from pipeline.core.io import locked, read_json, write_json
from pipeline.core.params import ROOT
from pipeline.detection.calibration import Calibration, report_file
from pipeline.models import variant
from pipeline.stages import DATA_KEYS, DATA_STAGES, MODEL_STAGES, params_of, runner, tracking
from pipeline.stages.entrypoint import CONF_DIR, load_settings

log = logging.getLogger("pipeline")

# Where a job's outputs go: data once per sweep (or run) and data settings, the model and reports per job.
SHARED_PATHS = {"raw": "raw", "manifests": "manifests", "splits": "splits"}
JOB_PATHS = {"model": "models", "reports": "reports"}
PREPARED = "prepared.json"  # beside the data: the settings its download and split were made with


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _data_folder(cfg: DictConfig) -> str:
    """A name for the job's data settings (as written, unresolved): equal settings, equal name."""
    values = [OmegaConf.select(cfg, key) for key in DATA_KEYS]
    text = json.dumps([OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for v in values])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def configure_job(cfg: DictConfig) -> dict[str, str]:
    """Point `paths` into this job's Hydra folders and leave the model registry alone
    (`mlflow.register_detector` false), unless the command line sets them; return the tags that
    identify the job in MLflow."""
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    shared_dir = Path(hydra_cfg.sweep.dir).resolve() if multirun else job_dir
    given = {override.split("=", 1)[0].lstrip("+~") for override in hydra_cfg.overrides.task}
    data_dir = shared_dir / "data" / _data_folder(cfg) if multirun else job_dir / "data"
    for folders, base in ((SHARED_PATHS, data_dir), (JOB_PATHS, job_dir)):
        for key, folder in folders.items():
            if f"paths.{key}" not in given:
                cfg.paths[key] = str(base / folder)
    if "mlflow.register_detector" not in given:
        cfg.mlflow.register_detector = False  # the registry's alias stays on the DVC pipeline's detector
    tags = {"pipeline_job": _relative(job_dir)}
    if multirun:
        tags.update(
            sweep=_relative(shared_dir),
            sweep_job=str(hydra_cfg.job.num),
            sweep_overrides=hydra_cfg.job.override_dirname,
        )
    return tags


def prepare_data(settings: Settings) -> None:
    """Download and split, unless a job of the sweep (in this process or another) did it for the same
    data settings; jobs that reach here at once wait for the first one."""
    data_key = json.dumps(
        {**params_of(settings, DATA_KEYS), "paths.raw": str(settings.paths.raw)}, sort_keys=True
    )
    marker = settings.paths.raw.parent / PREPARED
    with locked(settings.paths.raw.parent / f".{PREPARED}.lock"):
        if marker.exists() and read_json(marker) == {"data": data_key}:
            return
        marker.unlink(missing_ok=True)
        for stage in DATA_STAGES:
            runner(stage)(settings)
        write_json(marker, {"data": data_key})


def run_all(settings: Settings) -> float:
    """Every stage in order, the data prepared once per sweep and data settings. Returns the validation
    ROC AUC (NaN when the validation set holds no tumors)."""
    prepare_data(settings)
    keras.backend.clear_session()  # the previous job's model is not needed any more
    for stage in MODEL_STAGES:
        runner(stage)(settings)
    val_roc_auc = Calibration.load(report_file(settings.paths)).val_roc_auc
    return math.nan if val_roc_auc is None else val_roc_auc


def _record(cfg: DictConfig, settings: Settings | None, tags: dict[str, str], error: BaseException) -> None:
    """Record the failure in MLflow; with an invalid config, as well as its mlflow section allows."""
    try:
        raw = OmegaConf.to_container(cfg, resolve=False)
        mlflow_config = settings.mlflow if settings else MlflowConfig.model_validate(raw["mlflow"])
        params = settings.flat_params() if settings else flatten(raw)
        model = variant(settings.model.model_dump() if settings else raw["model"])
        tracking.record_failure(mlflow_config, params, tags, error, model)
    except Exception as failure:  # noqa: BLE001 - the job's own error is the one to report
        log.warning("could not record the failure in MLflow: %s", failure)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    tags = configure_job(cfg)
    settings = None
    try:
        with lifecycle.sigterm_stops():  # SIGTERM ends the job's open run KILLED and stops the sweep
            settings = load_settings(cfg)
            hardware.configure(settings.runtime.threads)
            with tracking.tagged(tags):
                return run_all(settings)
    except Exception as err:
        _record(cfg, settings, tags, err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("job failed, the sweep goes on: %s", err)
            raise  # Hydra marks the job failed (Optuna: trial FAIL); the sweep reports it at the end
        if isinstance(err, PipelineError):
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
