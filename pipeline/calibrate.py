"""Stage `calibrate`: the anomaly threshold from healthy validation errors (mean + k * std), and how
well the scores rank the validation tumors above the healthy slices (tuning never looks at the test set)."""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pandas as pd

from pipeline import tracking
from pipeline.config import Settings, stage
from pipeline.data.datasets import load_split
from pipeline.io import write_csv, write_json
from pipeline.metrics import ranking_metrics
from pipeline.models import load_model
from pipeline.plots import error_histogram, save_figure
from pipeline.scoring import score
from pipeline.thresholds import mean_std_threshold

log = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    model = load_model(settings.paths.model_file)
    val = load_split(settings, "val")
    errors = score(model, val.images)
    healthy, tumor = errors[val.labels == 0], errors[val.labels == 1]
    threshold = mean_std_threshold(healthy, settings.calibrate.k)
    summary = {"threshold": threshold, "k": settings.calibrate.k, "val_error_mean": float(np.mean(healthy)),
               "val_error_std": float(np.std(healthy)), "val_images": len(healthy),
               "val_tumor_images": len(tumor)}
    if len(tumor):  # the objective of hyperparameter searches: it never sees the test set
        summary.update({f"val_{k}": v for k, v in ranking_metrics(val.labels, errors).items()})

    out = settings.paths.stage_reports("calibrate")
    write_json(out / "threshold.json", summary)
    write_csv(out / "val_errors.csv", pd.DataFrame({"path": val.frame["path"], "class": val.frame["class"],
                                                    "error": errors}))
    histogram = {"healthy validation": healthy} | ({"tumor validation": tumor} if len(tumor) else {})
    save_figure(error_histogram(histogram, threshold, "Reconstruction errors of the validation slices"),
                out / "error_histogram.png")

    with tracking.model_run(settings, "calibrate", settings.paths.run_file("train"),
                            settings.paths.run_file("calibrate"), model):
        mlflow.log_metrics({k: v for k, v in summary.items() if k != "k"})
        for name in ("threshold.json", "val_errors.csv", "error_histogram.png"):
            mlflow.log_artifact(str(out / name), "calibrate")
    log.info("threshold %.6f = mean %.6f + %.2f * std %.6f over %d healthy validation slices; "
             "validation ROC AUC %s", threshold, summary["val_error_mean"], settings.calibrate.k,
             summary["val_error_std"], len(healthy), f"{summary.get('val_roc_auc', float('nan')):.3f}")


main = stage(run)

if __name__ == "__main__":
    main()
