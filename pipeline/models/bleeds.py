"""Synthetic bleeds for denoising training (`train.bleeds`).

Coarse noise teaches a U-Net to smooth, not to remove what healthy heads never show: it still redraws
most of a thin bright band against the skull (the residual inside such a bleed is about half its
contrast, no more than the inner table's own edge). Here a training input gets, with some probability,
one hyperdense shape where blood collects, and the target stays the clean slice:
- a blob (intraparenchymal or intraventricular blood), from a thresholded smooth random field;
- a thin streak (blood in a sulcus), from a narrow band round a smooth field's zero level;
- a crescent against the inner table (epidural, subdural), from the distance to the skull's bone.
The shapes are drawn from random fields and the slice's own anatomy, not from the phantom generator
(`pipeline.data.synthetic`), so that the built-in volumes stay a test of them. The contrast is in
Hounsfield units: every window channel gets it through its own width, as real blood would show.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from scipy import ndimage

from pipeline.core.config import BleedConfig, PreprocessConfig
from pipeline.data.head import bone_mask, head_mask, intracranial_mask

ANATOMY_CHANNELS = 2  # where a bleed may lie (0/1), then the distance to the nearest bone (pixels)
FAR = 1e3  # the bone distance of a slice without bone
FIELD_GRID = 8  # the random fields are drawn on this grid and upsampled: shapes of about side / 8
KINDS = 3  # blob, streak, crescent


@dataclass(frozen=True)
class SyntheticBleeds:
    probability: float
    contrast: tuple[float, float]  # HU
    widths: tuple[float, ...]  # each scored channel's window width (HU): channel value per HU is 1 / width
    head_threshold: float

    @classmethod
    def configured(cls, config: BleedConfig, preprocess: PreprocessConfig) -> SyntheticBleeds | None:
        """The bleeds `config` asks for on inputs made by `preprocess`; None when they are off."""
        if config.probability == 0:
            return None
        windows = (preprocess.dicom_window, *preprocess.extra_windows)
        return cls(
            config.probability, config.contrast, tuple(w.width for w in windows), preprocess.head.threshold
        )

    def anatomy(self, images: np.ndarray) -> np.ndarray:
        """(n, h, w, ANATOMY_CHANNELS) float32 for (n, h, w, c) slices: where a bleed may lie (the
        cranial cavity less bone; the head less bone where no cavity is closed), then each pixel's
        distance to the nearest bone. Stacked onto the images, they follow the augmentation's geometry."""
        return np.stack([_anatomy(image[..., 0], self.head_threshold) for image in images])

    def add(self, inputs: tf.Tensor, anatomy: tf.Tensor, seed: keras.random.SeedGenerator) -> tf.Tensor:
        """`inputs` (b, h, w, c) with a bleed drawn into each slice with `probability`, clipped to [0, 1].
        The scored channels get the HU contrast through their windows; neighbouring slices' channels
        (brain window) get it as channel 0 does: a bleed spans slices."""
        shape = tf.shape(inputs)
        batch, size = shape[0], shape[1:3]
        room, distance = anatomy[..., :1], anatomy[..., 1:]

        def per_slice(low: float, high: float) -> tf.Tensor:
            return keras.random.uniform((batch, 1, 1, 1), low, high, seed=seed)

        blob = tf.clip_by_value((_field(batch, size, seed) - per_slice(1.2, 2.2)) / 0.25, 0.0, 1.0)
        patch = tf.cast(_field(batch, size, seed) > per_slice(0.0, 1.0), inputs.dtype)  # where streaks lie
        streak = tf.clip_by_value(1 - tf.abs(_field(batch, size, seed)) / per_slice(0.05, 0.15), 0.0, 1.0)
        crescent = tf.clip_by_value(per_slice(1.0, 4.0) + 0.5 - distance, 0.0, 1.0)  # 1-4 px thick
        kinds = tf.one_hot(keras.random.randint((batch,), 0, KINDS, seed=seed), KINDS, dtype=inputs.dtype)
        kinds = tf.reshape(kinds, (batch, 1, 1, 1, KINDS))
        shapes = tf.stack([blob, streak * patch, crescent * patch], axis=-1)
        chosen = tf.reduce_sum(kinds * shapes, axis=-1) * room
        drawn = tf.cast(keras.random.uniform((batch, 1, 1, 1), seed=seed) < self.probability, inputs.dtype)
        hounsfield = per_slice(*self.contrast) * drawn * chosen
        neighbours = inputs.shape[-1] - len(self.widths)
        per_unit = [1 / width for width in (*self.widths, *[self.widths[0]] * neighbours)]
        return tf.clip_by_value(inputs + hounsfield * tf.constant(per_unit, inputs.dtype), 0.0, 1.0)


def _anatomy(gray: np.ndarray, head_threshold: float) -> np.ndarray:
    head = head_mask(gray, head_threshold)
    bone = bone_mask(gray, head)
    room = intracranial_mask(gray, head, rim=0) & ~bone
    distance = ndimage.distance_transform_edt(~bone) if bone.any() else np.full(gray.shape, FAR)
    return np.stack([room, distance], axis=-1).astype(np.float32)


def _field(batch: tf.Tensor, size: tf.Tensor, seed: keras.random.SeedGenerator) -> tf.Tensor:
    """(batch, h, w, 1) smooth Gaussian random fields of unit spread per slice."""
    grid = keras.random.normal((batch, FIELD_GRID, FIELD_GRID, 1), seed=seed)
    field = tf.image.resize(grid, size, method="bicubic")
    return field / (tf.math.reduce_std(field, axis=(1, 2, 3), keepdims=True) + 1e-6)
