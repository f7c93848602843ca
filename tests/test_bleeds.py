"""Synthetic bleeds for denoising training: drawn only inside the cranial cavity, brighter by the HU
contrast through each channel's window, never into the target, the same for the same seed."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from pipeline.core.config import AugmentConfig, BleedConfig, DicomWindow
from pipeline.models.bleeds import SyntheticBleeds
from pipeline.models.training import training_batches
from tests.conftest import preprocess_config, train_config

SIDE = 64
BRAIN, SCALP = 0.4, 0.5  # brain window values of brain and scalp; the skull is 1.0 (bone)


def _skulls(n: int) -> np.ndarray:
    """(n, SIDE, SIDE, 2): a brain disc inside a bone ring inside scalp; channel 1 a wider window's view."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    radius = np.hypot(yy - SIDE / 2 + 0.5, xx - SIDE / 2 + 0.5)
    brain = np.select([radius < 20, radius < 24, radius < 28], [BRAIN, 1.0, SCALP], 0.0)
    wide = np.select([radius < 20, radius < 24, radius < 28], [0.3, 0.8, 0.32], 0.0)
    return np.repeat(np.stack([brain, wide], axis=-1)[None], n, axis=0).astype(np.float32)


def _bleeds(probability: float = 1.0) -> SyntheticBleeds:
    subdural = (DicomWindow(level=75, width=215),)
    preprocess = preprocess_config(SIDE).model_copy(update={"extra_windows": subdural})
    return SyntheticBleeds.configured(BleedConfig(probability=probability, contrast=(40, 40)), preprocess)


def test_configured_reads_the_windows_and_is_off_at_probability_zero() -> None:
    bleeds = _bleeds()
    assert bleeds.widths == (80, 215) and bleeds.contrast == (40, 40)
    off = BleedConfig(probability=0, contrast=(15, 60))
    assert SyntheticBleeds.configured(off, preprocess_config(SIDE)) is None


@pytest.mark.parametrize("contrast", [(0, 10), (30, 20)])
def test_contrast_must_be_a_positive_range(contrast: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="contrast"):
        BleedConfig(probability=0.5, contrast=contrast)


def test_anatomy_is_the_cavity_without_bone_and_the_distance_to_bone() -> None:
    anatomy = _bleeds().anatomy(_skulls(1))[0]
    room, distance = anatomy[..., 0], anatomy[..., 1]
    images = _skulls(1)[0, ..., 0]
    assert set(np.unique(room)) == {0, 1}
    assert np.all(images[room == 1] == BRAIN)  # neither bone nor scalp nor background
    assert room.sum() > 0.9 * (images == BRAIN).sum()
    assert np.all(distance[images == 1.0] == 0) and distance[SIDE // 2, SIDE // 2] > 15


def _drawn(bleeds: SyntheticBleeds, images: np.ndarray, seed: int = 0) -> np.ndarray:
    anatomy = tf.constant(bleeds.anatomy(images))
    return bleeds.add(tf.constant(images), anatomy, keras.random.SeedGenerator(seed)).numpy()


def test_bleeds_brighten_only_the_cavity_by_the_contrast_through_each_window() -> None:
    images = _skulls(32)
    drawn = _drawn(_bleeds(), images)
    change = drawn - images
    assert change.min() >= 0  # hyperdense only
    outside = images[..., 0] != BRAIN
    assert np.all(change[outside] == 0)  # bone, scalp and background untouched
    bled = change[..., 0] > 0
    assert bled.any(axis=(1, 2)).mean() > 0.5  # most slices got a visible one (some shapes miss the room)
    assert np.all(bled.sum(axis=(1, 2)) < 0.5 * (~outside[0]).sum())  # a bleed, not a flood
    # 40 HU through the brain window (80 HU wide) and a subdural one (215 HU wide), in the same ratio
    full = np.isclose(change[..., 0], 40 / 80, rtol=1e-5)
    assert full.any()
    np.testing.assert_allclose(change[..., 1][full], 40 / 215, rtol=1e-5)
    assert drawn.max() <= 1


def test_probability_zero_draws_nothing_and_a_seed_draws_the_same() -> None:
    images = _skulls(8)
    never = SyntheticBleeds(0.0, (40, 40), (80, 215), 0.1)
    np.testing.assert_array_equal(_drawn(never, images), images)
    np.testing.assert_array_equal(_drawn(_bleeds(), images, seed=3), _drawn(_bleeds(), images, seed=3))
    assert not np.array_equal(_drawn(_bleeds(), images, seed=3), _drawn(_bleeds(), images, seed=4))


def test_neighbouring_slices_get_the_bleed_as_the_brain_window_does() -> None:
    images = _skulls(16)
    with_neighbours = np.concatenate([images, images[..., :1], images[..., :1]], axis=-1)
    change = _drawn(_bleeds(), with_neighbours) - with_neighbours
    np.testing.assert_allclose(change[..., 2], change[..., 0])
    np.testing.assert_allclose(change[..., 3], change[..., 0])


def test_training_batches_draw_bleeds_into_inputs_only_and_keep_the_channels() -> None:
    images = _skulls(8)
    config = train_config(batch_size=8, augment=False)
    inputs, targets = next(iter(training_batches(images, config, seed=0, bleeds=_bleeds())))
    assert inputs.shape == targets.shape == images.shape
    np.testing.assert_array_equal(targets.numpy()[np.argsort(targets.numpy().sum(axis=(1, 2, 3)))], images)
    assert np.all(inputs.numpy() >= targets.numpy()) and np.any(inputs.numpy() > targets.numpy())


def test_training_batches_move_the_anatomy_with_the_slice() -> None:
    """A head off the image's centre, rotated, shifted and flipped: its bleeds stay inside its moved
    cavity (the brain pixels and the two that rotation and shift, each interpolating, blur round
    them), so the anatomy moved with the slice."""
    images = np.roll(_skulls(16), 3, axis=1)
    turns = AugmentConfig(rotation=45, shift=0.05, flip=True, intensity=0)
    config = train_config(batch_size=16).model_copy(update={"augment": turns})
    inputs, targets = (t.numpy()[..., 0] for t in next(iter(training_batches(images, config, 1, _bleeds()))))
    added = inputs - targets
    cavity = ndimage.binary_dilation(np.isclose(targets, BRAIN, atol=0.01), np.ones((1, 3, 3)), iterations=2)
    assert added[cavity].sum() > 0
    assert added[~cavity].max() < 0.05
