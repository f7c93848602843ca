"""Stage `evaluate`: detection quality on the held-out test set (healthy + tumor) and the detection
rate on the extra tumor-only set, as DVC metrics and plots and in the model's MLflow run; and the
product: model, threshold and preprocessing packaged as one MLflow model, registered under an alias."""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

import mlflow
import numpy as np
import pandas as pd

from pipeline import serving, tracking
from pipeline.config import Settings, stage
from pipeline.data.datasets import load_split
from pipeline.detector import Detector
from pipeline.io import atomic_dir, read_json, write_csv, write_json
from pipeline.metrics import detection_metrics, detection_rate, pr_curve_table, roc_curve_table
from pipeline.models import load_model
from pipeline.plots import confusion_figure, error_histogram, reconstruction_grid, roc_pr_figure, save_figure

log = logging.getLogger(__name__)
CLASS_NAMES = np.array(["healthy", "tumor"])


def _examples(settings: Settings, images: np.ndarray, reconstructions: np.ndarray, labels: np.ndarray,
              errors: np.ndarray, paths: pd.Series) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A few slices per class, picked at random with the pipeline's seed, for the reconstruction figure."""
    rng = np.random.default_rng(settings.seed)
    picked = np.concatenate([
        rng.choice(np.flatnonzero(labels == label), size=min(settings.evaluate.n_examples,
                                                             int(np.sum(labels == label))), replace=False)
        for label in (0, 1)])
    titles = [f"{CLASS_NAMES[labels[i]]}\n{PurePosixPath(paths.iloc[i]).name}\nerror {errors[i]:.3g}"
              for i in picked]
    return images[picked], reconstructions[picked], titles


def run(settings: Settings) -> None:
    threshold = read_json(settings.paths.stage_reports("calibrate") / "threshold.json")["threshold"]
    detector = Detector(load_model(settings.paths.model_file), threshold, settings.preprocess,
                        {"model": settings.model.name})
    test = load_split(settings, "test")
    extra = load_split(settings, "test_extra")

    reconstructions, errors = detector.reconstruct_and_score(test.images)
    labels = test.labels
    results = detection_metrics(labels, errors, threshold).as_dict()
    extra_errors = detector.score(extra.images)
    if len(extra_errors):
        results["extra_tumor_detection_rate"] = detection_rate(extra_errors, threshold)
    results.update(threshold=threshold, test_images=len(labels), extra_tumor_images=len(extra_errors))

    out = settings.paths.stage_reports("evaluate")
    write_json(out / "metrics.json", results)
    flagged = detector.is_anomaly(errors)
    scores = pd.concat([
        pd.DataFrame({"split": "test", "path": test.frame["path"], "class": test.frame["class"],
                      "score": errors, "is_anomaly": flagged}),
        pd.DataFrame({"split": "test_extra", "path": extra.frame["path"], "class": extra.frame["class"],
                      "score": extra_errors, "is_anomaly": detector.is_anomaly(extra_errors)}),
    ])
    write_csv(out / "scores.csv", scores)
    write_csv(out / "roc.csv", roc_curve_table(labels, errors))
    write_csv(out / "pr.csv", pr_curve_table(labels, errors))
    write_csv(out / "confusion.csv", pd.DataFrame({"actual": CLASS_NAMES[labels],
                                                   "predicted": CLASS_NAMES[flagged.astype(int)]}))
    histogram = {"healthy": errors[labels == 0], "tumor": errors[labels == 1]}
    if len(extra_errors):
        histogram["tumor (extra)"] = extra_errors
    figures = {
        "error_histogram.png": error_histogram(histogram, threshold, "Reconstruction errors on the test sets"),
        "roc_pr.png": roc_pr_figure(labels, errors),
        "confusion.png": confusion_figure(results["tn"], results["fp"], results["fn"], results["tp"]),
        "reconstructions.png": reconstruction_grid(*_examples(settings, test.images, reconstructions, labels,
                                                               errors, test.frame["path"])),
    }
    for name, figure in figures.items():
        save_figure(figure, out / name)

    with tracking.model_run(settings, "evaluate", settings.paths.run_file("calibrate"),
                            settings.paths.run_file("evaluate"), detector.model) as run_id:
        mlflow.log_metrics({f"test_{k}": v for k, v in results.items()})
        for name in ("metrics.json", "scores.csv", "roc.csv", "pr.csv", "confusion.csv", *figures):
            mlflow.log_artifact(str(out / name), "evaluate")
        detector.info["run_id"] = run_id
        example = (settings.paths.raw / test.frame["path"].iloc[0]).read_bytes()
        with atomic_dir(settings.paths.detector) as saved:
            serving.save(detector, saved, example)
            version = serving.log_and_register(saved, example, settings.mlflow)
    uri = f"models:/{settings.mlflow.registered_model}@{settings.mlflow.model_alias}"
    registered = f" and registered as {uri} (version {version})" if version else f", logged to run {run_id}"
    log.info("detector saved to %s%s", settings.paths.detector, registered)
    log.info("test: accuracy %.3f, ROC AUC %.3f, F1 %.3f; extra tumor-only set: %d slices, %s flagged",
             results["accuracy"], results["roc_auc"], results["f1"], len(extra_errors),
             f"{results['extra_tumor_detection_rate']:.1%}" if len(extra_errors) else "none")


main = stage(run)

if __name__ == "__main__":
    main()
