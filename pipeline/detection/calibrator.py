"""How a detector is calibrated, on the validation split alone and writing nothing: `calibrate` chooses
the score kind and its healthy reference, whether to add the feature-space score, every threshold rule
on the validation scores, and the pixel threshold, and returns the record (`calibration.Calibration`)
with what stage `calibrate` reports beside it. Tuning never looks at the test set."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.data.datasets import Split
from pipeline.detection.calibration import Calibration
from pipeline.detection.detector import Detector
from pipeline.detection.features import SCALE, FeatureScore, PatchMemory
from pipeline.detection.normalization import NORMALIZERS, ContentNormalizer, Normalizer, SliceFacts
from pipeline.detection.scoring import choose_kind
from pipeline.detection.thresholds import calibrate_thresholds, label_free
from pipeline.evaluation.localization import PixelThreshold, choose_pixel_threshold, tumor_outlines
from pipeline.evaluation.metrics import bootstrap_intervals, ranking_metrics


def choose_features(
    detector: Detector,
    settings: Settings,
    val: Split,
    facts: SliceFacts,
    memory: PatchMemory,
    scores: np.ndarray,
) -> tuple[FeatureScore | None, np.ndarray, float | None]:
    """Decide whether the detector adds the feature-space score of `memory` to `scores` (the applied
    kind's, normalised): `score.features=always`, or under `auto` where that raises validation ROC AUC.
    Returns the feature score added (or None), the validation scores with it, and the validation ROC AUC
    with it (None where it was not tried or there are no validation tumors to judge it on)."""
    configured = settings.score.features
    if settings.score.normalize == "none":  # the config allows only `never` then: nothing to add to
        return None, scores, None
    if not memory.usable:
        if configured == "always":
            raise PipelineError(
                f"score.features=always: model '{settings.model.name}' has no encoder feature map at "
                f"1/{SCALE} of its input; use score.features=never"
            )
        return None, scores, None
    is_tumor = val.labels == 1
    masks = detector.regions(val.images)
    distances = memory.scores(detector.model, val.images, masks, settings.score.percentile)
    feature_score = FeatureScore(memory, ContentNormalizer.fit(facts[~is_tumor], distances[~is_tumor]))
    combined = scores + feature_score.normalizer.apply(distances, facts)
    if not is_tumor.any():
        add = configured == "always"  # auto has nothing to decide on: it leaves the score as it is
        return (feature_score, combined, None) if add else (None, scores, None)
    with_features = ranking_metrics(val.labels, combined)["roc_auc"]
    add = configured == "always" or (
        configured == "auto" and with_features > ranking_metrics(val.labels, scores)["roc_auc"]
    )
    return (feature_score, combined, with_features) if add else (None, scores, with_features)


def calibrate_pixel_threshold(
    detector: Detector, settings: Settings, val: Split, reconstructions: np.ndarray
) -> PixelThreshold:
    """The pixel threshold (`threshold.pixel`), from the healthy validation slices' residual maps and,
    where every anomalous validation slice has a lesion outline, how well each candidate outlines them."""
    is_tumor = val.labels == 1
    healthy_maps = detector.residual_maps(val.images[~is_tumor], reconstructions[~is_tumor])
    outlines = (
        tumor_outlines(settings.paths.raw, val.frame[is_tumor], settings.preprocess)
        if settings.threshold.pixel == "auto" and is_tumor.any()
        else None
    )
    if outlines is None:
        return choose_pixel_threshold(healthy_maps, settings.threshold)
    lesion_maps = detector.residual_maps(val.images[is_tumor], reconstructions[is_tumor])
    return choose_pixel_threshold(healthy_maps, settings.threshold, lesion_maps, outlines)


@dataclass(frozen=True)
class Normalization:
    """What calibrate applies: the normaliser (None: raw scores), every kind's validation scores through
    it, their ROC AUCs, the kind applied, and the applied kind's ROC AUC under each normaliser tried."""

    normalizer: Normalizer | None
    scores: dict[str, np.ndarray]
    by_kind: dict[str, float]
    kind: str
    by_normalizer: dict[str, float]


def choose_normalization(
    settings: Settings, val: Split, facts: SliceFacts, scores: dict[str, np.ndarray]
) -> Normalization:
    """Fit the configured normaliser (under `auto`, each registered one) on the healthy validation slices,
    each kind of score its own, and keep the one (and, under `score.kind: auto`, the kind) with the best
    validation ROC AUC; ties and a validation split without anomalies keep the first registered. The
    reference judges each validation slice by other patients' slices only, as it will a new scan."""
    configured = settings.score.normalize
    names = NORMALIZERS.names() if configured == "auto" else [] if configured == "none" else [configured]
    is_tumor, patients = val.labels == 1, val.patients
    healthy = ~is_tumor
    candidates: list[Normalization] = []
    for name in names or [None]:
        normalizers: dict[str, Normalizer] = {}
        if name is not None:
            normalizer_class = NORMALIZERS.get(name)
            normalizers = {
                kind: normalizer_class.fit(facts[healthy], values[healthy], patients[healthy])
                for kind, values in scores.items()
            }
        normalised = {
            kind: normalizers[kind].apply(values, facts, patients) if normalizers else values
            for kind, values in scores.items()
        }
        by_kind = (
            {kind: ranking_metrics(val.labels, values)["roc_auc"] for kind, values in normalised.items()}
            if is_tumor.any()
            else {}
        )
        kind = choose_kind(settings.score.kind, by_kind)
        candidates.append(
            Normalization(normalizers[kind] if normalizers else None, normalised, by_kind, kind, {})
        )
    by_normalizer = {
        candidate.normalizer.name: candidate.by_kind[candidate.kind]
        for candidate in candidates
        if candidate.normalizer is not None and candidate.by_kind
    }
    best = max(candidates, key=lambda candidate: candidate.by_kind.get(candidate.kind, -np.inf))
    return Normalization(best.normalizer, best.scores, best.by_kind, best.kind, by_normalizer)


def threshold_rules(settings: Settings, healthy: np.ndarray, tumor: np.ndarray) -> dict[str, float]:
    """Every threshold rule's threshold on the applied scores; the configured rule must be among them."""
    thresholds = calibrate_thresholds(healthy, tumor, settings.threshold)
    method = settings.threshold.method
    if method not in thresholds:
        raise PipelineError(
            f"threshold={method} needs tumor slices in the validation split, and it has none: "
            f"use a label-free rule ({' or '.join(f'threshold={m}' for m in label_free())})"
        )
    return thresholds


@dataclass(frozen=True)
class Calibrated:
    """What `calibrate` finds: the record, the feature-space memory it fitted (a stage output whether or
    not the detector adds its score) and the validation slices' scores the stage reports."""

    calibration: Calibration
    memory: PatchMemory
    scores: dict[str, np.ndarray]  # every kind's, through the applied normaliser
    applied: np.ndarray  # the detector's: the applied kind's, plus the feature-space score where added


def calibrate(detector: Detector, settings: Settings, val: Split, healthy_train: Split) -> Calibrated:
    """Everything stage `calibrate` decides, writing nothing: the score kind and normaliser, whether to
    add the feature-space score (its memory fitted on `healthy_train`), every threshold rule on the
    validation scores of `detector` (uncalibrated) and the pixel threshold; with validation tumors, how
    well the applied score ranks them."""
    reconstructions = detector.reconstruct(val.images)
    facts = detector.facts(val.images, val.levels)
    normalization = choose_normalization(
        settings, val, facts, detector.all_scores(val.images, reconstructions)
    )
    memory = PatchMemory.fit(
        detector.model, healthy_train.images, detector.regions(healthy_train.images), settings.seed
    )
    features, applied, with_features = choose_features(
        detector, settings, val, facts, memory, normalization.scores[normalization.kind]
    )
    is_tumor = val.labels == 1
    healthy, tumor = applied[~is_tumor], applied[is_tumor]
    thresholds = threshold_rules(settings, healthy, tumor)
    threshold = thresholds[settings.threshold.method]
    pixel = calibrate_pixel_threshold(detector, settings, val, reconstructions)
    ranking: dict[str, float] = {}
    interval: tuple[float | None, float | None] = (None, None)
    if len(tumor):  # the objective of hyperparameter searches, and how score kinds compare
        ranking = ranking_metrics(val.labels, applied)
        interval = bootstrap_intervals(
            val.labels, applied, threshold, seed=settings.seed, n_resamples=settings.evaluate.bootstrap
        )["roc_auc"]
    normalizer = normalization.normalizer
    calibration = Calibration(
        threshold=threshold,
        method=settings.threshold.method,
        score=normalization.kind,
        score_configured=settings.score.kind,
        normalizer=normalizer.as_dict() if normalizer is not None else None,
        normalize=normalizer.name if normalizer is not None else "none",
        normalize_configured=settings.score.normalize,
        features=features is not None,
        feature_normalizer=features.normalizer.as_dict() if features is not None else None,
        thresholds=thresholds,
        pixel_threshold=pixel.value,
        pixel_rule=pixel.rule,
        pixel_percentile=pixel.percentile,
        val_score_mean=float(np.mean(healthy)),
        val_score_std=float(np.std(healthy)),
        val_images=len(healthy),
        val_tumor_images=len(tumor),
        val_dice=pixel.val_dice if math.isfinite(pixel.val_dice) else None,
        val_roc_auc=ranking.get("roc_auc"),
        val_pr_auc=ranking.get("pr_auc"),
        val_roc_auc_ci_low=interval[0],
        val_roc_auc_ci_high=interval[1],
        val_roc_auc_by_score=normalization.by_kind if len(tumor) else None,
        val_roc_auc_by_normalizer=normalization.by_normalizer if len(tumor) else None,
        val_roc_auc_with_features=with_features,
    )
    return Calibrated(calibration, memory, normalization.scores, applied)
