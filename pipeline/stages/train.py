"""Stage `train`: fit the configured autoencoder on healthy training slices and log it to MLflow."""

from __future__ import annotations

import logging

import mlflow
import pandas as pd
from mlflow.data.dataset import Dataset
from mlflow.exceptions import MlflowException

from pipeline.core import hardware
from pipeline.core.config import Settings
from pipeline.core.io import atomic_path, write_csv, write_json
from pipeline.data.classes import HEALTHY
from pipeline.data.datasets import for_data, load_split, read_splits
from pipeline.data.manifest import content_hash, read_manifest
from pipeline.data.splitting import split_counts
from pipeline.models import build_model, variant, with_precision
from pipeline.models.bleeds import SyntheticBleeds
from pipeline.models.training import fit, seed_everything
from pipeline.stages import tracking
from pipeline.stages.entrypoint import stage

log = logging.getLogger(__name__)


def _log_input(dataset: Dataset, context: str) -> None:
    """Log `dataset` as an input of the active run. MLflow's SQL store looks for it in the experiment and
    then inserts it: a run that logs the same data at the same moment (workers of one search) loses that
    race with a duplicate key, and a second try finds the other's row."""
    try:
        mlflow.log_input(dataset, context=context)
    except MlflowException:
        mlflow.log_input(dataset, context=context)


def run(settings: Settings) -> None:
    settings = for_data(settings)  # preprocess.extra_windows as the data allows: what runs and is logged
    data_hash = content_hash(read_manifest(settings.paths.manifests / "raw.csv"))
    with tracking.new_model_run(
        settings, data_hash, settings.paths.run_file("train"), variant(settings.model.model_dump())
    ):
        train = load_split(settings, "train")
        val = load_split(settings, "val", only_class=HEALTHY)
        seed_everything(settings.seed)
        machine = hardware.detect()
        precision = hardware.resolve_precision(settings.train.precision, machine)
        mlflow.log_param("precision", precision)
        mlflow.set_tag("hardware", machine.describe())
        model = build_model(settings.model.name, train.images.shape[1:], settings.model.params, precision)
        splits = read_splits(settings)
        mlflow.log_metrics({f"images_{k}": v for k, v in split_counts(splits).items()})
        mlflow.set_tag("split_hash", content_hash(splits, by="split"))
        for split, context in ((train, "training"), (val, "validation")):
            identity = split.frame[["path", "class", "sha256"]]  # what the data is, for the run's Datasets
            _log_input(mlflow.data.from_pandas(identity, name=split.name), context)
        result = fit(
            model,
            train.images,
            val.images,
            settings.train,
            settings.seed,
            callbacks=[mlflow.keras.MlflowCallback(log_every_epoch=True)],
            bleeds=SyntheticBleeds.configured(settings.train.bleeds, settings.preprocess),
        )
        if precision != "float32":  # scored in float32 everywhere (docs/hardware.md)
            model = with_precision(model, settings.model.name, settings.model.params, "float32")
        history = pd.DataFrame(result.history).rename_axis("epoch").reset_index()
        history["epoch"] += 1
        summary = {
            "best_epoch": result.best_epoch,
            "epochs_run": len(history),
            "best_val_loss": min(result.history["val_loss"]),
            "train_seconds": result.seconds,
            "train_images_per_second": result.images_per_second,
            "parameters": model.count_params(),
            "train_images": len(train.frame),
            "val_images": len(val.frame),
        }
        mlflow.log_metrics(summary)
        tracking.log_model(model)
        # the outputs last: a failure above (MLflow) leaves the previous model and its reports as they were
        with atomic_path(settings.paths.model_file) as tmp:
            model.save(tmp)
        write_csv(settings.paths.stage_reports("train") / "history.csv", history)
        write_json(settings.paths.stage_reports("train") / "metrics.json", summary)
        log.info(
            "trained %s in %s on %s: best epoch %d of %d, val loss %.5f, %.1f s (%.0f images/s)",
            settings.model.name,
            precision,
            machine.describe(),
            result.best_epoch,
            len(history),
            summary["best_val_loss"],
            result.seconds,
            result.images_per_second,
        )


main = stage(run)

if __name__ == "__main__":
    main()
