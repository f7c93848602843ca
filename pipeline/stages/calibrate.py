"""Stage `calibrate`: the detector calibrated on the validation split (`pipeline.detection.calibrator`:
the score kind and reference, the feature-space score, every threshold rule, the pixel threshold);
this stage writes the record (`threshold.json`), the feature memory, the validation scores and their
histogram, and logs them to the model's MLflow run."""

from __future__ import annotations

import logging

import mlflow
import pandas as pd

from pipeline.core.config import Settings
from pipeline.core.io import write_csv
from pipeline.data.classes import HEALTHY
from pipeline.data.datasets import for_data, load_split
from pipeline.detection.calibration import Calibration, report_file
from pipeline.detection.calibrator import calibrate
from pipeline.detection.detector import Detector
from pipeline.detection.scoring import AUTO
from pipeline.evaluation.plots import error_histogram, save_figure
from pipeline.models import load_model
from pipeline.stages import tracking
from pipeline.stages.entrypoint import stage

log = logging.getLogger(__name__)


def mlflow_metrics(calibration: Calibration) -> dict[str, float]:
    """The record's numbers (not its file version) and each rule's threshold, kind's and normaliser's
    validation ROC AUC as metrics of their own."""
    record = calibration.as_json()
    del record["version"]
    return (
        {key: value for key, value in record.items() if isinstance(value, int | float)}
        | {f"threshold_{rule}": value for rule, value in calibration.thresholds.items()}
        | {f"val_roc_auc_{kind}": auc for kind, auc in (calibration.val_roc_auc_by_score or {}).items()}
        | {
            f"val_roc_auc_normalize_{name}": auc
            for name, auc in (calibration.val_roc_auc_by_normalizer or {}).items()
        }
    )


def log_summary(calibration: Calibration, settings: Settings) -> None:
    """One line: the threshold, how it was found, and how each kind of score ranks the validation slices."""
    ranked = (
        ", ".join(f"{kind} {auc:.3f}" for kind, auc in calibration.val_roc_auc_by_score.items())
        if calibration.val_roc_auc_by_score is not None
        else "no validation tumors"
    )
    with_features = calibration.val_roc_auc_with_features
    log.info(
        "threshold %.6g (%s on %s scores, %s%s, of %d healthy validation slices)%s; "
        "validation ROC AUC by score: %s%s",
        calibration.threshold,
        calibration.method,
        calibration.score,
        f"normalised: {calibration.normalize}" if calibration.normalizer is not None else "not normalised",
        " + the feature-space score" if calibration.features else "",
        calibration.val_images,
        " (score.kind=auto: the best on validation)" if calibration.score_configured == AUTO else "",
        ranked,
        f"; with the feature-space score {with_features:.3f} "
        f"(score.features={settings.score.features}: {'added' if calibration.features else 'not added'})"
        if with_features is not None
        else "",
    )


def run(settings: Settings) -> None:
    settings = for_data(settings)
    detector = Detector.uncalibrated(
        load_model(settings.paths.model_file), settings.preprocess, settings.score
    )
    val = load_split(settings, "val")
    calibrated = calibrate(detector, settings, val, load_split(settings, "train", only_class=HEALTHY))
    calibration, applied = calibrated.calibration, calibrated.applied
    calibrated.memory.save(settings.paths.patches)
    out = settings.paths.stage_reports("calibrate")
    calibration.save(report_file(settings.paths))
    write_csv(
        out / "val_errors.csv",
        pd.DataFrame(
            {"path": val.frame["path"], "class": val.frame["class"], "score": applied} | calibrated.scores
        ),
    )
    is_tumor = val.labels == 1
    histogram = {"healthy validation": applied[~is_tumor]} | (
        {"tumor validation": applied[is_tumor]} if is_tumor.any() else {}
    )
    save_figure(
        error_histogram(
            histogram, calibration.threshold, f"{calibration.score} scores of the validation slices"
        ),
        out / "error_histogram.png",
    )

    with tracking.model_run(settings, "calibrate", detector.model):
        mlflow.set_tag(
            "score_applied", calibration.score
        )  # what score.kind=auto chose, beside the configured kind
        mlflow.set_tag("normalize_applied", calibration.normalize)  # what score.normalize=auto chose
        mlflow.set_tag("pixel_rule", calibration.pixel_rule)  # what threshold.pixel=auto chose
        mlflow.log_metrics(mlflow_metrics(calibration))
        for path in (report_file(settings.paths), out / "val_errors.csv", out / "error_histogram.png"):
            mlflow.log_artifact(str(path), "calibrate")
    log_summary(calibration, settings)


main = stage(run)

if __name__ == "__main__":
    main()
