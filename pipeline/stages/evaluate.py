"""Stage `evaluate`: detection quality on the held-out test set (healthy + tumor), with 95% bootstrap
intervals, at the applied threshold and at every threshold rule calibrate computed; the same on a copy of the
test slices blanked outside the head, and per image source (format, mode, size), both of which would expose a
detector that scores the source instead of the anatomy; the shortcut audit (`pipeline.evaluation.audit`: what
metadata alone, or a slice's level in its scan, would achieve); localisation where tumor outlines exist; the
detection rate on the extra tumor-only set. Where the detector fails (`pipeline.evaluation.diagnostics`): the
metrics per band of the slice's level in its scan (`by_level.csv`, for slices of scans) and per lesion kind
(`by_kind.csv`, where the split has a `kind` column), and a warning (log, MLflow tag `warning.*`, 0/1 metric
`warning_*`) when validation does not separate the classes or the slice's level alone beats the detector. All
as DVC metrics and plots and in the model's MLflow run. Packaging the detector is the next stage's job
(`package`)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import mlflow
import numpy as np
import pandas as pd

from pipeline.core.config import Settings
from pipeline.core.io import write_csv, write_json
from pipeline.data.classes import CLASSES
from pipeline.data.datasets import Split, for_data, load_split
from pipeline.data.images import DECODE_WORKERS, blanked_copy
from pipeline.data.neighbours import frame_keys
from pipeline.detection.calibration import Calibration, report_file
from pipeline.detection.detector import Detector
from pipeline.evaluation.audit import largest_mixed_source, levels, shortcut_audit, source_groups
from pipeline.evaluation.diagnostics import (
    WARNING_TAGS,
    by_kind,
    by_level,
    failure_warnings,
    flat_metrics,
    slice_kinds,
    warning_flags,
)
from pipeline.evaluation.localization import pixel_intervals, pixel_metrics, tumor_outlines
from pipeline.evaluation.metrics import (
    bootstrap_intervals,
    detection_metrics,
    detection_rate,
    group_metrics,
    pr_curve_table,
    roc_curve_table,
    size_groups,
)
from pipeline.evaluation.plots import (
    confusion_figure,
    error_histogram,
    reconstruction_grid,
    roc_auc_by_kind,
    roc_pr_figure,
    save_figure,
    score_by_level,
)
from pipeline.evaluation.scans import scan_metrics, scan_table
from pipeline.stages import tracking
from pipeline.stages.entrypoint import stage

log = logging.getLogger(__name__)
CLASS_NAMES = np.array(CLASSES)


def _examples(
    settings: Settings,
    images: np.ndarray,
    reconstructions: np.ndarray,
    maps: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    paths: pd.Series,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A few slices per class, picked at random with the pipeline's seed, for the reconstruction figure."""
    rng = np.random.default_rng(settings.seed)
    picked = np.concatenate(
        [
            rng.choice(
                np.flatnonzero(labels == label),
                size=min(settings.evaluate.n_examples, int(np.sum(labels == label))),
                replace=False,
            )
            for label in (0, 1)
        ]
    )
    titles = [
        f"{CLASS_NAMES[labels[i]]}\n{PurePosixPath(paths.iloc[i]).name}\nscore {scores[i]:.3g}"
        for i in picked
    ]
    return images[picked], reconstructions[picked], maps[picked], titles


def _with_intervals(
    labels: np.ndarray, scores: np.ndarray, threshold: float, settings: Settings, prefix: str = ""
) -> dict[str, float]:
    """Detection metrics at `threshold` with their stratified-bootstrap 95% intervals (`*_ci_low/high`)."""
    results: dict[str, float] = detection_metrics(labels, scores, threshold).as_dict()
    intervals = bootstrap_intervals(
        labels, scores, threshold, n_resamples=settings.evaluate.bootstrap, seed=settings.seed
    )
    for name, (low, high) in intervals.items():
        results |= {f"{name}_ci_low": low, f"{name}_ci_high": high}
    return {f"{prefix}{key}": value for key, value in results.items()}


def _blanked_scores(detector: Detector, settings: Settings, split: Split) -> np.ndarray:
    """Scores of a copy of the slices with everything outside the head blanked before they reach the
    detector: if the detector scored text, overlays or background, these would differ. Each slice's
    neighbours (`preprocess.neighbours`) are the blanked copies of its scan's slices, as in `load_split`."""
    files = [settings.paths.raw / path for path in split.frame["path"]]
    with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as pool:
        copies = list(pool.map(lambda file: blanked_copy(file, settings.preprocess), files))
    batch = detector.decode(copies, [str(file) for file in files], *frame_keys(split.frame))
    return detector.score(batch.images, split.levels[batch.decoded])


def _by_source(frame: pd.DataFrame, labels: np.ndarray, scores: np.ndarray, threshold: float) -> pd.DataFrame:
    """Metrics per image format, mode and size: a detector that scored the source instead of the
    anatomy would flag the healthy slices of the tumor-heavy sources too."""
    groups = {
        "source": source_groups(frame),
        "format": frame["format"],
        "mode": frame["mode"],
        "size": size_groups(frame["width"], frame["height"]),
    }
    return pd.concat(
        [
            group_metrics(values.to_numpy(), labels, scores, threshold).assign(by=by)
            for by, values in groups.items()
        ],
        ignore_index=True,
    )


@dataclass(frozen=True)
class Scored:
    """The test sets as the detector saw them."""

    test: Split
    extra: Split
    reconstructions: np.ndarray
    scores: np.ndarray
    blanked: np.ndarray  # scores of the test slices blanked outside the head
    extra_scores: np.ndarray
    maps: np.ndarray  # residual maps of the test slices
    scans: pd.DataFrame  # per scan (volume) of the test set: its scores and the slice behind them


def score_test_sets(detector: Detector, settings: Settings) -> Scored:
    test, extra = load_split(settings, "test"), load_split(settings, "test_extra")
    reconstructions, scores = detector.reconstruct_and_score(test.images, test.levels)
    return Scored(
        test,
        extra,
        reconstructions,
        scores,
        _blanked_scores(detector, settings, test),
        detector.score(extra.images, extra.levels),
        detector.residual_maps(test.images, reconstructions),
        scan_table(test.frame, test.labels, scores, settings.evaluate.top_k),
    )


def lesion_outlines(scored: Scored, settings: Settings) -> np.ndarray | None:
    """The anomalous test slices' lesion outlines, aligned with their residual maps; None unless every
    one has a mask."""
    frame = scored.test.frame[scored.test.labels == 1]
    return tumor_outlines(settings.paths.raw, frame, settings.preprocess)


def diagnostic_tables(
    scored: Scored, calibration: Calibration, outlines: np.ndarray | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test set's metrics per level band (no rows for lone images) and per lesion kind (no rows
    without kinds; Dice where outlines exist)."""
    frame, labels, scores = scored.test.frame, scored.test.labels, scored.scores
    threshold = calibration.threshold
    tumor_maps = scored.maps[labels == 1] if outlines is not None else None
    return (
        by_level(levels(frame), labels, scores, threshold),
        by_kind(
            slice_kinds(frame, labels),
            labels,
            scores,
            threshold,
            tumor_maps,
            outlines,
            calibration.pixel_threshold,
        ),
    )


def evaluation_metrics(
    scored: Scored, calibration: Calibration, settings: Settings, outlines: np.ndarray | None
) -> dict[str, float]:
    """Every metric of the test sets: at the applied threshold with intervals, at each rule's threshold,
    on the blanked copy, on the extra tumors, and of localisation where outlines exist."""
    labels, scores, threshold = scored.test.labels, scored.scores, calibration.threshold
    results = _with_intervals(labels, scores, threshold, settings)
    for method, value in calibration.thresholds.items():
        at = detection_metrics(labels, scores, value)
        results |= {
            f"{method}_{key}": getattr(at, key) for key in ("accuracy", "recall", "specificity", "f1")
        }
    results |= _with_intervals(labels, scored.blanked, threshold, settings, prefix="blanked_")
    if len(scored.extra_scores):
        results["extra_tumor_detection_rate"] = detection_rate(scored.extra_scores, threshold)
    if outlines is not None:
        tumor_maps = scored.maps[labels == 1]
        results |= pixel_metrics(tumor_maps, outlines, calibration.pixel_threshold)
        results |= pixel_intervals(
            tumor_maps, outlines, calibration.pixel_threshold, settings.evaluate.bootstrap, settings.seed
        )
    results |= scan_metrics(scored.scans) if len(scored.scans) else {}
    results |= shortcut_audit(
        scored.test.frame, labels, scores, settings.paths.raw, settings.preprocess, settings.seed
    )
    results.update(threshold=threshold, test_images=len(labels), extra_tumor_images=len(scored.extra_scores))
    return results


def write_tables(
    scored: Scored, detector: Detector, diagnostics: tuple[pd.DataFrame, pd.DataFrame], out: Path
) -> list[str]:
    """The per-slice and per-scan scores, the per-source, per-level-band and per-kind metrics (the last
    two written without rows where they do not apply, so DVC always finds them) and the curves DVC
    plots; returns the file names."""
    test, extra, labels = scored.test, scored.extra, scored.test.labels
    flagged = detector.is_anomaly(scored.scores)
    tables = {
        "scores.csv": pd.concat(
            [
                pd.DataFrame(
                    {
                        "split": "test",
                        "path": test.frame["path"],
                        "class": test.frame["class"],
                        "score": scored.scores,
                        "blanked_score": scored.blanked,
                        "is_anomaly": flagged,
                    }
                ),
                pd.DataFrame(
                    {
                        "split": "test_extra",
                        "path": extra.frame["path"],
                        "class": extra.frame["class"],
                        "score": scored.extra_scores,
                        "is_anomaly": detector.is_anomaly(scored.extra_scores),
                    }
                ),
            ]
        ),
        "scans.csv": scored.scans,
        "by_source.csv": _by_source(test.frame, labels, scored.scores, detector.threshold),
        "by_level.csv": diagnostics[0],
        "by_kind.csv": diagnostics[1],
        "roc.csv": roc_curve_table(labels, scored.scores),
        "pr.csv": pr_curve_table(labels, scored.scores),
        "confusion.csv": pd.DataFrame(
            {"actual": CLASS_NAMES[labels], "predicted": CLASS_NAMES[flagged.astype(int)]}
        ),
    }
    for name, table in tables.items():
        write_csv(out / name, table, for_people=True)
    return list(tables)


def draw_figures(
    scored: Scored,
    results: dict[str, float],
    diagnostics: tuple[pd.DataFrame, pd.DataFrame],
    detector: Detector,
    settings: Settings,
    out: Path,
) -> list[str]:
    labels, scores = scored.test.labels, scored.scores
    histogram = {name: scores[labels == label] for label, name in enumerate(CLASSES)}
    if len(scored.extra_scores):
        histogram["tumor (extra)"] = scored.extra_scores
    figures = {
        "error_histogram.png": error_histogram(
            histogram, results["threshold"], f"{detector.scoring.kind} scores on the test sets"
        ),
        "roc_pr.png": roc_pr_figure(labels, scores),
        "confusion.png": confusion_figure(results["tn"], results["fp"], results["fn"], results["tp"]),
        "reconstructions.png": reconstruction_grid(
            *_examples(
                settings,
                scored.test.images,
                scored.reconstructions,
                scored.maps,
                labels,
                scores,
                scored.test.frame["path"],
            )
        ),
    }
    level = levels(scored.test.frame)
    if level is not None:
        figures["score_by_level.png"] = score_by_level(
            level, labels, scores, results["threshold"], bands=diagnostics[0]
        )
    if len(diagnostics[1]):
        figures["roc_auc_by_kind.png"] = roc_auc_by_kind(diagnostics[1], results["roc_auc"])
    for name, figure in figures.items():
        save_figure(figure, out / name)
    return list(figures)


def failures(results: dict[str, float], val_roc_auc: float | None) -> dict[str, str]:
    """The failures a report must show (`pipeline.evaluation.diagnostics.failure_warnings`: MLflow tag ->
    message), each logged as a warning."""
    warnings = failure_warnings(results, val_roc_auc)
    for message in warnings.values():
        log.warning(message)
    return warnings


def _set_warning_tags(warnings: dict[str, str]) -> None:
    """The active run's `warning.*` tags become exactly `warnings`: one a former evaluate of the same
    run set (the model's run is resumed) goes when its failure is gone."""
    tags = mlflow.get_run(mlflow.active_run().info.run_id).data.tags
    for tag in WARNING_TAGS:
        if tag in tags and tag not in warnings:
            mlflow.delete_tag(tag)
    mlflow.set_tags(warnings)


def run(settings: Settings) -> None:
    settings = for_data(settings)
    calibration = Calibration.load(report_file(settings.paths))
    detector = Detector.calibrated(settings, calibration)
    scored = score_test_sets(detector, settings)
    outlines = lesion_outlines(scored, settings)
    results = evaluation_metrics(scored, calibration, settings, outlines)
    diagnostics = diagnostic_tables(scored, calibration, outlines)
    results |= flat_metrics(*diagnostics)
    warnings = failures(results, calibration.val_roc_auc)
    results |= warning_flags(warnings)
    out = settings.paths.stage_reports("evaluate")
    write_json(out / "metrics.json", results)
    files = [
        "metrics.json",
        *write_tables(scored, detector, diagnostics, out),
        *draw_figures(scored, results, diagnostics, detector, settings, out),
    ]
    with tracking.model_run(settings, "evaluate", detector.model):
        mlflow.log_metrics({f"test_{k}": v for k, v in results.items() if np.isfinite(v)})
        _set_warning_tags(warnings)
        for name in files:
            mlflow.log_artifact(str(out / name), "evaluate")
    log.info(
        "test: ROC AUC %.3f [%.3f, %.3f], accuracy %.3f [%.3f, %.3f] at the %s threshold; "
        "outside-head-blanked copy: ROC AUC %.3f; extra tumor-only set: %d slices, %s flagged; "
        "shortcut audit: metadata alone ROC AUC %.3f, metadata + score %.3f, inside %s %.3f",
        results["roc_auc"],
        results["roc_auc_ci_low"],
        results["roc_auc_ci_high"],
        results["accuracy"],
        results["accuracy_ci_low"],
        results["accuracy_ci_high"],
        calibration.method,
        results["blanked_roc_auc"],
        len(scored.extra_scores),
        f"{results['extra_tumor_detection_rate']:.1%}" if len(scored.extra_scores) else "none",
        results["metadata_roc_auc"],
        results["metadata_score_roc_auc"],
        largest_mixed_source(scored.test.frame, scored.test.labels) or "no mixed source group",
        results.get("source_roc_auc", float("nan")),
    )


main = stage(run)

if __name__ == "__main__":
    main()
