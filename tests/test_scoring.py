"""Anomaly scores: known values, read inside the head only, and each kind reacting to what it is for."""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np
import pytest
from scipy import ndimage

from pipeline.core.config import ScoreConfig
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.detection import scoring
from pipeline.detection.scoring import SCORES, reconstruct_and_score, regions, residual_maps, score_all
from tests.conftest import score_config

THRESHOLD = 0.1
SIZE = 32
YY, XX = np.mgrid[:SIZE, :SIZE]
# A head centred left-right (column 15.5 is the mirror axis), rows 4..28, columns 3..28.
HEAD = ((YY - 16) / 12) ** 2 + ((XX - 15.5) / 12.5) ** 2 <= 1


def _batch(*images: np.ndarray) -> np.ndarray:
    return np.stack(images)[..., None].astype(np.float32)


def _head(seed: int = 0, symmetric: bool = False) -> np.ndarray:
    """A textured head in [0.3, 0.7], black outside."""
    texture = ndimage.gaussian_filter(np.random.default_rng(seed).random((SIZE, SIZE)), 1.5)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    if symmetric:
        texture = (texture + texture[:, ::-1]) / 2
    return np.where(HEAD, 0.3 + 0.4 * texture, 0.0)


def _config(kind: str, region: str = "head", percentile: float = 99, smoothing: float = 1.0) -> ScoreConfig:
    return ScoreConfig(kind=kind, region=region, percentile=percentile, smoothing=smoothing)


def _score(kind: str, images: np.ndarray, reconstructions: np.ndarray, **settings: object) -> np.ndarray:
    config = _config(kind, **settings)
    return score_all(images, reconstructions, config, THRESHOLD, (kind,))[kind]


def test_mse_and_l1_known_values_over_the_whole_image() -> None:
    images = np.zeros((3, 4, 4, 1), dtype=np.float32)
    reconstructions = images.copy()
    reconstructions[1] = 0.5
    reconstructions[2, :2] = 0.2  # half the pixels off by 0.2
    scores = score_all(images, reconstructions, score_config(region="image"), THRESHOLD, ("mse", "l1"))
    np.testing.assert_allclose(scores["mse"], [0.0, 0.25, 0.02])
    np.testing.assert_allclose(scores["l1"], [0.0, 0.5, 0.1])


def test_mse_is_read_inside_the_head_only() -> None:
    image = _head()
    reconstruction = image.copy()
    reconstruction[HEAD] += 0.1
    np.testing.assert_allclose(_score("mse", _batch(image), _batch(reconstruction)), [0.01], rtol=1e-4)
    # Over the whole image, the same residual is diluted by the black background.
    np.testing.assert_allclose(
        _score("mse", _batch(image), _batch(reconstruction), region="image"), [0.01 * HEAD.mean()], rtol=1e-4
    )


def test_a_residual_outside_the_head_changes_no_score() -> None:
    image = _head()
    reconstruction = image + np.where(HEAD, 0.05 * np.sin(XX / 3), 0.0)
    corners = ~HEAD  # right up to the head's edge, where smoothing and SSIM windows reach across it
    outside = reconstruction + np.where(corners, 0.9, 0.0)
    assert np.abs(outside - reconstruction)[HEAD].max() == 0 and np.abs(outside - reconstruction).max() == 0.9
    images = _batch(image, image)
    scores = score_all(images, _batch(reconstruction, outside), _config("mse"), THRESHOLD)
    assert list(scores) == SCORES.names()
    for kind, values in scores.items():
        assert values.shape == (2,)
        np.testing.assert_allclose(values[1], values[0], rtol=1e-9, atol=1e-12, err_msg=kind)
    whole = score_all(images, _batch(reconstruction, outside), _config("mse", region="image"), THRESHOLD)
    assert whole["mse"][1] > whole["mse"][0] + 0.8**2 * corners.mean()  # the image region does see it


def test_residual_percentile_100_without_smoothing_is_the_largest_residual_in_the_head() -> None:
    image = _head()
    residual = np.random.default_rng(1).uniform(-0.2, 0.2, (SIZE, SIZE))
    reconstruction = image + np.where(HEAD, residual, 0.9)  # far larger residual outside
    score = _score("residual_percentile", _batch(image), _batch(reconstruction), percentile=100, smoothing=0)
    np.testing.assert_allclose(score, [np.abs(residual[HEAD]).max()], rtol=1e-6)


def test_a_small_lesion_moves_residual_percentile_far_more_than_mse() -> None:
    image = _head()
    spot = np.zeros((SIZE, SIZE))
    spot[14:17, 9:12] = 0.5  # 9 pixels
    uniform = np.where(HEAD, np.sqrt(np.sum(spot**2) / HEAD.sum()), 0.0)  # the same energy over the head
    images = _batch(image, image)
    reconstructions = _batch(image + spot, image + uniform)
    mse = _score("mse", images, reconstructions)
    percentile = _score("residual_percentile", images, reconstructions)
    np.testing.assert_allclose(mse[0], mse[1], rtol=1e-4)
    assert percentile[0] > 3 * percentile[1]


def test_ssim_is_zero_for_a_perfect_reconstruction_and_grows_with_lost_structure() -> None:
    image = _head(seed=2)
    blurred = [np.where(HEAD, ndimage.gaussian_filter(image, sigma), 0.0) for sigma in (0.5, 1.0, 2.0)]
    scores = _score("ssim", _batch(image, *blurred), _batch(image, image, image, image))
    assert abs(scores[0]) < 1e-6
    assert 0 < scores[1] < scores[2] < scores[3]


def test_ssim_weighs_lost_structure_over_a_uniform_shift_of_the_same_energy() -> None:
    image = _head(seed=3)
    structure = np.where(HEAD, ndimage.gaussian_filter(image, 2.0), 0.0) - image
    shift = np.where(HEAD, np.sqrt(np.mean(structure[HEAD] ** 2)), 0.0)
    images = _batch(image, image)
    reconstructions = _batch(image + structure, image + shift)
    mse = _score("mse", images, reconstructions)
    np.testing.assert_allclose(mse[0], mse[1], rtol=1e-3)
    ssim = _score("ssim", images, reconstructions)
    assert ssim[0] > 2 * ssim[1]


def test_symmetry_is_zero_for_a_mirror_symmetric_head_and_grows_with_a_one_sided_blob() -> None:
    image = _head(seed=4, symmetric=True)
    np.testing.assert_array_equal(image, image[:, ::-1])
    lesion = image.copy()
    lesion[((YY - 12) / 3) ** 2 + ((XX - 9) / 3) ** 2 <= 1] = 0.95
    scores = _score("symmetry", _batch(image, lesion), _batch(image, image))
    assert abs(scores[0]) < 1e-9
    assert scores[1] > 0.1


def test_symmetry_needs_no_reconstruction() -> None:
    image = _head(seed=5)
    first = _score("symmetry", _batch(image), _batch(image))
    second = _score("symmetry", _batch(image), _batch(np.zeros_like(image)))
    np.testing.assert_array_equal(first, second)


def test_residual_maps_are_the_smoothed_residual_inside_the_head_and_zero_outside() -> None:
    image = _head()
    reconstruction = image + 0.3  # residual everywhere, outside the head too
    maps = residual_maps(_batch(image), _batch(reconstruction), _config("mse"), THRESHOLD)
    assert maps.shape == (1, SIZE, SIZE) and maps.dtype == np.float32
    assert not maps[0][~HEAD].any()
    interior = ndimage.binary_erosion(HEAD, iterations=4)  # 4 sigma from the edge
    np.testing.assert_allclose(maps[0][interior], 0.3, rtol=1e-3)  # a uniform residual stays uniform
    assert maps[0][HEAD].max() <= 0.3 + 1e-6  # ... and at the edge, only the head's own residual counts
    whole = residual_maps(_batch(image), _batch(reconstruction), _config("mse", region="image"), THRESHOLD)
    np.testing.assert_allclose(whole[0], 0.3, rtol=1e-5)


def test_residual_maps_smoothing_spreads_a_point_and_keeps_its_mass() -> None:
    image = _head()
    reconstruction = image.copy()
    reconstruction[16, 15] += 0.5
    maps = residual_maps(_batch(image), _batch(reconstruction), _config("mse", smoothing=1.0), THRESHOLD)[0]
    assert 0 < maps[16, 15] < 0.5 and maps[16, 17] > 0
    np.testing.assert_allclose(maps.sum(), 0.5, rtol=1e-4)  # the point is far from the head's edge


def test_empty_batch_gives_empty_scores() -> None:
    empty = np.empty((0, SIZE, SIZE, 1), dtype=np.float32)
    scores = score_all(empty, empty, _config("mse"), THRESHOLD)
    assert list(scores) == SCORES.names()
    assert all(values.shape == (0,) for values in scores.values())


def test_regions_are_the_heads_and_fall_back_to_the_whole_image_when_black() -> None:
    images = _batch(_head(), np.zeros((SIZE, SIZE)))
    masks = regions(images, _config("mse"), THRESHOLD)
    assert masks.shape == (2, SIZE, SIZE) and masks.dtype == bool
    np.testing.assert_array_equal(masks[0], HEAD)
    assert masks[1].all()
    assert regions(images, _config("mse", region="image"), THRESHOLD).all()
    # A black image still gets a finite score for every kind.
    scores = score_all(images[1:], images[1:] + 0.2, _config("mse"), THRESHOLD)
    np.testing.assert_allclose(scores["mse"], [0.04], rtol=1e-5)
    assert all(np.isfinite(values).all() for values in scores.values())


def test_every_kind_is_registered() -> None:
    assert SCORES.names() == ["l1", "mse", "residual_percentile", "ssim", "symmetry"]


@pytest.mark.parametrize("batch", [1, 0])
def test_unknown_kind_is_a_config_error_listing_the_registered_ones(batch: int) -> None:
    images = np.repeat(_batch(_head()), batch, axis=0)
    with pytest.raises(ConfigError) as error:
        score_all(images, images, _config("mse"), THRESHOLD, ("mse", "psnr"))
    assert str(error.value) == (
        "score.kind: unknown score 'psnr' (available: l1, mse, residual_percentile, ssim, symmetry)"
    )


@pytest.fixture
def brightest_score() -> Iterator[str]:
    """A score registered for one test only: the brightest reconstructed pixel inside the head."""
    name = "test_brightest_reconstruction"
    SCORES.register(name)(lambda x, r, masks, config: np.where(masks, r[..., 0], -np.inf).max(axis=(1, 2)))
    yield name
    del SCORES._entries[name]


def test_a_registered_score_is_computed_by_score_all_and_sees_only_the_head(brightest_score: str) -> None:
    image = _head()
    reconstruction = image + np.where(HEAD, 0.1, 0.9)  # brighter still outside the head
    scores = score_all(_batch(image), _batch(reconstruction), _config("mse"), THRESHOLD)
    assert brightest_score in SCORES.names() and list(scores) == SCORES.names()
    np.testing.assert_allclose(scores[brightest_score], [image[HEAD].max() + 0.1], rtol=1e-6)
    only = score_all(_batch(image), _batch(reconstruction), _config("mse"), THRESHOLD, (brightest_score,))
    assert list(only) == [brightest_score]


def test_registering_a_kind_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'mse' is registered twice"):
        SCORES.register("mse")(lambda x, r, masks, config: x)


def test_reconstruct_and_score_uses_the_model_and_the_configured_kind() -> None:
    inputs = keras.Input((SIZE, SIZE, 1))
    model = keras.Model(inputs, keras.layers.Rescaling(0.5)(inputs))  # halves every pixel
    image = _head()
    images = _batch(image, np.zeros((SIZE, SIZE)))
    reconstructions, scores = reconstruct_and_score(model, images, _config("l1"), THRESHOLD)
    np.testing.assert_allclose(reconstructions, images * 0.5, rtol=1e-6)
    np.testing.assert_allclose(scores, [np.mean(image[HEAD]) / 2, 0.0], rtol=1e-5)
    empty = np.empty((0, SIZE, SIZE, 1), dtype=np.float32)
    reconstructions, scores = reconstruct_and_score(model, empty, _config("l1"), THRESHOLD)
    assert reconstructions.shape == empty.shape and scores.shape == (0,)


def test_auto_chooses_the_kind_with_the_best_validation_roc_auc_and_a_named_kind_stays() -> None:
    by_kind = {"mse": 0.61, "ssim": 0.83, "symmetry": float("nan"), "l1": 0.83}
    assert scoring.choose_kind(scoring.AUTO, by_kind) == "ssim"  # ties: the first registered
    assert scoring.choose_kind("mse", by_kind) == "mse"
    assert scoring.choose_kind("mse", {}) == "mse"
    with pytest.raises(PipelineError, match="score.kind=auto .* has none: name a kind"):
        scoring.choose_kind(scoring.AUTO, {})


def test_flip_tta_averages_the_reconstruction_of_the_mirror_image_mirrored_back() -> None:
    ramp = np.linspace(0.0, 0.2, 8, dtype=np.float32)[None, None, :, None]  # left-right biased model
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda x: x + ramp)])
    images = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(scoring.reconstruct(model, images), images + ramp, atol=1e-6)
    np.testing.assert_allclose(scoring.reconstruct(model, images, "flip"), images + 0.1, atol=1e-6)
    assert scoring.reconstruct(model, images[:0], "flip").shape == (0, 8, 8, 1)
