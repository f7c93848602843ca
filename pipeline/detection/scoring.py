"""Anomaly scores: how badly the autoencoder reconstructs each slice, inside the head.

Every score reads the residual only where the head is (`ScoreConfig.region`), so that text, rulers and
background outside it cannot make a slice look anomalous. The kinds:
- `mse`, `l1`: mean squared / absolute residual, the method's score and its robust cousin;
- `ssim`: 1 - mean structural similarity, which weighs lost structure over a uniform intensity shift;
- `residual_percentile`: a high percentile (100 = the maximum) of the Gaussian-smoothed absolute residual,
  which a small lesion moves while it barely moves a mean over the whole head;
- `symmetry`: the same percentile of the smoothed difference between the slice and its mirror image
  (no model needed): brain CT is nearly left-right symmetric and most tumors are one-sided.
With several input channels (`preprocess.extra_windows`: the slice through more Hounsfield windows), the
residual of a pixel is the largest of its channels' absolute residuals, so that an anomaly seen in any
window counts: `mse`, `l1`, `residual_percentile` and the residual maps read that; `ssim` and `symmetry`
read channel 0 (the brain window), as do the head masks and scored regions. Neighbouring slices'
channels (`preprocess.neighbours`) are model input only: `channels` (the slice's own, `scored_channels`)
keeps them out of every score and map, so that a lesion one slice away is not this slice's.
Each kind is a function registered in `SCORES`; the config accepts exactly the registered names, so a
new kind is one registered function. `score.kind: auto` lets calibrate choose (`choose_kind`): the kinds
rank differently from one dataset to the next, so each dataset's own validation split decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from pipeline.core.config import ScoreConfig
from pipeline.core.errors import PipelineError
from pipeline.core.registry import Registry
from pipeline.data.head import head_mask, intracranial_mask
from pipeline.detection.features import FeatureScore
from pipeline.detection.normalization import Normalizer, SliceFacts
from pipeline.models import infer

# (x, r, masks, config) -> one score per slice; x, r are (n, h, w, channels) float64 with r == x outside
# the masks (n, h, w).
ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray, ScoreConfig], np.ndarray]
SCORES: Registry[ScoreFn] = Registry("score", "score.kind")
AUTO = "auto"  # score.kind: the kind with the best validation ROC AUC


def reconstruct(model: keras.Model, images: np.ndarray, tta: str = "none") -> np.ndarray:
    """The model's output for a batch, the same for a slice whatever it is batched with (`infer`).
    With `tta="flip"`, the mean of the reconstructions of the slice and of its mirror image (mirrored
    back): test-time augmentation that halves what is left of the model's left-right noise, at twice
    the cost."""
    if not len(images):
        return images.copy()
    reconstructions = infer(model, images)
    if tta == "flip":
        mirrored = infer(model, np.ascontiguousarray(images[:, :, ::-1]))[:, :, ::-1]
        reconstructions = (reconstructions + mirrored) / 2
    return reconstructions


def heads(images: np.ndarray, head_threshold: float) -> np.ndarray:
    """(n, h, w) head masks of a batch; a slice with nothing head-like (a blank upload) is all head,
    scored whole rather than not at all."""
    masks = np.stack([head_mask(image[..., 0], head_threshold) for image in images])
    masks[~masks.any(axis=(1, 2))] = True
    return masks


def regions(
    images: np.ndarray, config: ScoreConfig, head_threshold: float, head_masks: np.ndarray | None = None
) -> np.ndarray:
    """(n, h, w) boolean masks of where each slice is scored: its head, its cranial cavity with the
    skull's inner table (`brain`), or the whole image. `head_masks`: the batch's `heads`, if at hand."""
    if config.region == "image":
        return np.ones(images.shape[:3], dtype=bool)
    head_masks = heads(images, head_threshold) if head_masks is None else head_masks
    if config.region == "head":
        return head_masks
    return np.stack(
        [intracranial_mask(image[..., 0], head) for image, head in zip(images, head_masks, strict=True)]
    )


def _smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma)) if sigma > 0 else maps


def _residual(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(n, h, w): each pixel's absolute residual, the largest over the channels (..., channels)."""
    return np.abs(x - r).max(axis=-1)


def _smoothed_residual(x: np.ndarray, r: np.ndarray, masks: np.ndarray, sigma: float) -> np.ndarray:
    """`_residual` inside the masks, smoothed, zero outside: nothing from outside the head reaches in."""
    return np.where(masks, _smooth(np.where(masks, _residual(x, r), 0.0), sigma), 0.0)


def residual_maps(
    images: np.ndarray,
    reconstructions: np.ndarray,
    config: ScoreConfig,
    head_threshold: float,
    channels: int | None = None,
) -> np.ndarray:
    """(n, h, w) smoothed absolute residuals (a pixel's largest over the first `channels` channels, all
    if None), zero outside the scored region: the heat maps that show where a slice is anomalous, and the
    localisation output."""
    masks = regions(images, config, head_threshold)
    own = slice(None, channels)
    maps = _smoothed_residual(images[..., own], reconstructions[..., own], masks, config.smoothing)
    return maps.astype(np.float32)


def _region_mean(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return (values * masks).sum(axis=(1, 2)) / masks.sum(axis=(1, 2))


def _region_percentile(values: np.ndarray, masks: np.ndarray, q: float) -> np.ndarray:
    return np.array([np.percentile(value[mask], q) for value, mask in zip(values, masks, strict=True)])


@SCORES.register("mse")
def _mse(x: np.ndarray, r: np.ndarray, masks: np.ndarray, config: ScoreConfig) -> np.ndarray:
    return _region_mean(np.square(_residual(x, r)), masks)


@SCORES.register("l1")
def _l1(x: np.ndarray, r: np.ndarray, masks: np.ndarray, config: ScoreConfig) -> np.ndarray:
    return _region_mean(_residual(x, r), masks)


@SCORES.register("ssim")
def _ssim(x: np.ndarray, r: np.ndarray, masks: np.ndarray, config: ScoreConfig) -> np.ndarray:
    similarity = np.stack(
        [
            structural_similarity(a, b, data_range=1.0, full=True)[1]
            for a, b in zip(x[..., 0], r[..., 0], strict=True)
        ]
    )
    return 1.0 - _region_mean(similarity, masks)


@SCORES.register("residual_percentile")
def _residual_percentile(x: np.ndarray, r: np.ndarray, masks: np.ndarray, config: ScoreConfig) -> np.ndarray:
    return _region_percentile(_smoothed_residual(x, r, masks, config.smoothing), masks, config.percentile)


@SCORES.register("symmetry")
def _symmetry(x: np.ndarray, r: np.ndarray, masks: np.ndarray, config: ScoreConfig) -> np.ndarray:
    x = x[..., 0]  # the brain window
    both_sides = masks & masks[:, :, ::-1]
    both_sides[~both_sides.any(axis=(1, 2))] = True
    asymmetry = np.where(both_sides, np.abs(x - x[:, :, ::-1]), 0.0)
    return _region_percentile(_smooth(asymmetry, config.smoothing), both_sides, config.percentile)


def score_all(
    images: np.ndarray,
    reconstructions: np.ndarray,
    config: ScoreConfig,
    head_threshold: float,
    kinds: Sequence[str] | None = None,
    masks: np.ndarray | None = None,
    channels: int | None = None,
) -> dict[str, np.ndarray]:
    """The requested kinds of score (None: every registered kind) for a batch, sharing the head masks
    (`regions`, computed here unless given): calibration compares them on the validation slices, so a
    kind is chosen on validation, never on test. Only the first `channels` channels are read (all if
    None). An unknown kind is a ConfigError that lists the registered ones."""
    functions = {kind: SCORES.get(kind) for kind in (SCORES.names() if kinds is None else kinds)}
    if not len(images):
        return {kind: np.empty(0) for kind in functions}
    masks = regions(images, config, head_threshold) if masks is None else masks
    x = images[..., :channels].astype(np.float64)
    # Outside the region the reconstruction counts as perfect, so that no smoothing or SSIM window
    # carries a residual from outside the head into it.
    r = np.where(masks[..., None], reconstructions[..., :channels], x)
    return {kind: function(x, r, masks, config) for kind, function in functions.items()}


def choose_kind(configured: str, roc_auc_by_kind: dict[str, float]) -> str:
    """The kind a detector applies: the configured one, or under `auto` the best validation ROC AUC
    (ties: the first registered). Without anomalous validation slices there is nothing to choose on."""
    if configured != AUTO:
        return configured
    finite = {kind: auc for kind, auc in roc_auc_by_kind.items() if np.isfinite(auc)}
    if not finite:
        raise PipelineError(
            "score.kind=auto chooses the score on anomalous validation slices, and the validation split "
            f"has none: name a kind ({', '.join(SCORES.names())})"
        )
    return max(finite, key=lambda kind: finite[kind])


def reconstruct_and_score(
    model: keras.Model,
    images: np.ndarray,
    config: ScoreConfig,
    head_threshold: float,
    normalizer: Normalizer | None = None,
    features: FeatureScore | None = None,
    levels: np.ndarray | None = None,
    channels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reconstructions and the configured anomaly score of a preprocessed batch (an empty batch gives
    empty arrays); with a `normalizer`, relative to healthy slices like it (`levels`: each slice's place
    in its scan, where it has one), and with `features` (which needs the normalizer), plus the
    feature-space score on the same scale. Scores read the first `channels` channels (all if None)."""
    if not len(images):
        return images, np.empty(0, dtype=np.float64)
    reconstructions = reconstruct(model, images, config.tta)
    head_masks = heads(images, head_threshold)
    masks = regions(images, config, head_threshold, head_masks)
    kinds = (config.kind,)
    scores = score_all(images, reconstructions, config, head_threshold, kinds, masks, channels)[config.kind]
    if normalizer is not None:
        facts = SliceFacts.of(images, masks, head_masks, levels)
        scores = normalizer.apply(scores, facts)
        if features is not None:
            scores = scores + features(model, images, masks, facts, config.percentile)
    return reconstructions, scores
