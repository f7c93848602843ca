"""Stage `evaluate`: detection quality on the held-out test set (healthy + tumor), with 95% bootstrap
intervals, at the applied threshold and at every threshold rule calibrate computed; the same on a copy
of the test slices blanked outside the head, and per image source (format, mode, size), both of which
would expose a detector that scores the source instead of the anatomy; localisation where tumor
outlines exist; the detection rate on the extra tumor-only set. All as DVC metrics and plots and in the
model's MLflow run. And the product: model, threshold, score and preprocessing packaged as one MLflow
model, registered under an alias."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath

import mlflow
import numpy as np
import pandas as pd

from pipeline import serving, tracking
from pipeline.config import Settings, stage
from pipeline.data.datasets import load_split
from pipeline.data.images import blanked_png
from pipeline.detector import Detector
from pipeline.io import atomic_dir, read_json, write_csv, write_json
from pipeline.localization import pixel_metrics, tumor_outlines
from pipeline.metrics import (
    bootstrap_intervals,
    detection_metrics,
    detection_rate,
    group_metrics,
    pr_curve_table,
    roc_curve_table,
    size_groups,
)
from pipeline.models import load_model
from pipeline.plots import confusion_figure, error_histogram, reconstruction_grid, roc_pr_figure, save_figure

log = logging.getLogger(__name__)
CLASS_NAMES = np.array(["healthy", "tumor"])


def _examples(settings: Settings, images: np.ndarray, reconstructions: np.ndarray, maps: np.ndarray,
              labels: np.ndarray, scores: np.ndarray, paths: pd.Series
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A few slices per class, picked at random with the pipeline's seed, for the reconstruction figure."""
    rng = np.random.default_rng(settings.seed)
    picked = np.concatenate([
        rng.choice(np.flatnonzero(labels == label), size=min(settings.evaluate.n_examples,
                                                             int(np.sum(labels == label))), replace=False)
        for label in (0, 1)])
    titles = [f"{CLASS_NAMES[labels[i]]}\n{PurePosixPath(paths.iloc[i]).name}\nscore {scores[i]:.3g}"
              for i in picked]
    return images[picked], reconstructions[picked], maps[picked], titles


def _with_intervals(labels: np.ndarray, scores: np.ndarray, threshold: float, settings: Settings,
                    prefix: str = "") -> dict[str, float]:
    """Detection metrics at `threshold` with their stratified-bootstrap 95% intervals (`*_ci_low/high`)."""
    results: dict[str, float] = detection_metrics(labels, scores, threshold).as_dict()
    intervals = bootstrap_intervals(labels, scores, threshold, n_resamples=settings.evaluate.bootstrap,
                                    seed=settings.seed)
    for name, (low, high) in intervals.items():
        results |= {f"{name}_ci_low": low, f"{name}_ci_high": high}
    return {f"{prefix}{key}": value for key, value in results.items()}


def _blanked_scores(detector: Detector, settings: Settings, frame: pd.DataFrame) -> np.ndarray:
    """Scores of a copy of the slices with everything outside the head blanked before they reach the
    detector: if the detector scored text, overlays or background, these would differ."""
    files = [settings.paths.raw / path for path in frame["path"]]
    with ThreadPoolExecutor() as pool:
        copies = list(pool.map(lambda file: blanked_png(file, settings.preprocess), files))
    batch = detector.decode(copies, [str(file) for file in files])
    return detector.score(batch.images)


def _by_source(frame: pd.DataFrame, labels: np.ndarray, scores: np.ndarray, threshold: float) -> pd.DataFrame:
    """Metrics per image format, mode and size: a detector that scored the source instead of the
    anatomy would flag the healthy slices of the tumor-heavy sources too."""
    groups = {"format": frame["format"], "mode": frame["mode"],
              "size": size_groups(frame["width"], frame["height"])}
    return pd.concat([group_metrics(values.to_numpy(), labels, scores, threshold).assign(by=by)
                      for by, values in groups.items()], ignore_index=True)


def run(settings: Settings) -> None:
    calibration = read_json(settings.paths.stage_reports("calibrate") / "threshold.json")
    threshold = calibration["threshold"]
    detector = Detector(load_model(settings.paths.model_file), threshold, settings.preprocess, settings.score,
                        {"model": settings.model.name, "threshold_method": calibration["method"]})
    test = load_split(settings, "test")
    extra = load_split(settings, "test_extra")

    reconstructions, scores = detector.reconstruct_and_score(test.images)
    labels = test.labels
    results = _with_intervals(labels, scores, threshold, settings)
    for method, value in calibration["thresholds"].items():  # every rule calibrate computed
        at = detection_metrics(labels, scores, value)
        results |= {f"{method}_{key}": getattr(at, key) for key in ("accuracy", "recall", "specificity", "f1")}
    blanked = _blanked_scores(detector, settings, test.frame)
    results |= _with_intervals(labels, blanked, threshold, settings, prefix="blanked_")
    extra_scores = detector.score(extra.images)
    if len(extra_scores):
        results["extra_tumor_detection_rate"] = detection_rate(extra_scores, threshold)
    maps = detector.residual_maps(test.images, reconstructions)
    outlines = tumor_outlines(settings.paths.raw, test.frame[labels == 1], settings.preprocess)
    if outlines is not None:
        results |= pixel_metrics(maps[labels == 1], outlines, calibration["pixel_threshold"])
    results.update(threshold=threshold, test_images=len(labels), extra_tumor_images=len(extra_scores))

    out = settings.paths.stage_reports("evaluate")
    write_json(out / "metrics.json", results)
    flagged = detector.is_anomaly(scores)
    table = pd.concat([
        pd.DataFrame({"split": "test", "path": test.frame["path"], "class": test.frame["class"],
                      "score": scores, "blanked_score": blanked, "is_anomaly": flagged}),
        pd.DataFrame({"split": "test_extra", "path": extra.frame["path"], "class": extra.frame["class"],
                      "score": extra_scores, "is_anomaly": detector.is_anomaly(extra_scores)}),
    ])
    write_csv(out / "scores.csv", table)
    write_csv(out / "by_source.csv", _by_source(test.frame, labels, scores, threshold))
    write_csv(out / "roc.csv", roc_curve_table(labels, scores))
    write_csv(out / "pr.csv", pr_curve_table(labels, scores))
    write_csv(out / "confusion.csv", pd.DataFrame({"actual": CLASS_NAMES[labels],
                                                   "predicted": CLASS_NAMES[flagged.astype(int)]}))
    histogram = {"healthy": scores[labels == 0], "tumor": scores[labels == 1]}
    if len(extra_scores):
        histogram["tumor (extra)"] = extra_scores
    figures = {
        "error_histogram.png": error_histogram(histogram, threshold, f"{settings.score.kind} scores on the "
                                               "test sets"),
        "roc_pr.png": roc_pr_figure(labels, scores),
        "confusion.png": confusion_figure(results["tn"], results["fp"], results["fn"], results["tp"]),
        "reconstructions.png": reconstruction_grid(*_examples(settings, test.images, reconstructions, maps,
                                                               labels, scores, test.frame["path"])),
    }
    for name, figure in figures.items():
        save_figure(figure, out / name)

    with tracking.model_run(settings, "evaluate", settings.paths.run_file("calibrate"),
                            settings.paths.run_file("evaluate"), detector.model) as run_id:
        mlflow.log_metrics({f"test_{k}": v for k, v in results.items() if np.isfinite(v)})
        for name in ("metrics.json", "scores.csv", "by_source.csv", "roc.csv", "pr.csv", "confusion.csv",
                     *figures):
            mlflow.log_artifact(str(out / name), "evaluate")
        detector.info["run_id"] = run_id
        example = (settings.paths.raw / test.frame["path"].iloc[0]).read_bytes()
        with atomic_dir(settings.paths.detector) as saved:
            serving.save(detector, saved, example)
            version = serving.log_and_register(saved, example, settings.mlflow)
    uri = f"models:/{settings.mlflow.registered_model}@{settings.mlflow.model_alias}"
    registered = f" and registered as {uri} (version {version})" if version else f", logged to run {run_id}"
    log.info("detector saved to %s%s", settings.paths.detector, registered)
    log.info("test: ROC AUC %.3f [%.3f, %.3f], accuracy %.3f [%.3f, %.3f] at the %s threshold; "
             "outside-head-blanked copy: ROC AUC %.3f; extra tumor-only set: %d slices, %s flagged",
             results["roc_auc"], results["roc_auc_ci_low"], results["roc_auc_ci_high"], results["accuracy"],
             results["accuracy_ci_low"], results["accuracy_ci_high"], calibration["method"],
             results["blanked_roc_auc"], len(extra_scores),
             f"{results['extra_tumor_detection_rate']:.1%}" if len(extra_scores) else "none")


main = stage(run)

if __name__ == "__main__":
    main()
