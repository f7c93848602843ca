"""Fit an autoencoder to reconstruct healthy slices: Adam with a constant or cosine-decayed learning
rate, MSE, early stopping on healthy validation loss, seeded so that a rerun on CPU gives the same numbers.

Training batches are augmented (small rotations and shifts, left-right flips, intensity gain: what
another healthy head, scanner or day could look like) and, for denoising training, given coarse noise
inside the head and synthetic bleeds (`pipeline.models.bleeds`); the target is always the clean
augmented slice. Validation slices stay as they are.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.core import hardware
from pipeline.core.config import AugmentConfig, NoiseConfig, TrainConfig
from pipeline.models.bleeds import SyntheticBleeds


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's kernels deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


@dataclass(frozen=True)
class TrainingResult:
    history: dict[str, list[float]]  # per-epoch loss and val_loss
    best_epoch: int  # 1-based; its weights are the ones kept
    seconds: float
    images_per_second: float


def augmenter(config: AugmentConfig, seed: int) -> keras.Sequential:
    """The geometric part of augmentation as Keras layers; what falls outside the image is black,
    as a CT background is."""
    layers: list[keras.layers.Layer] = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation / 360, fill_mode="constant", seed=seed + 1))
    if config.shift:
        layers.append(
            keras.layers.RandomTranslation(config.shift, config.shift, fill_mode="constant", seed=seed + 2)
        )
    return keras.Sequential(layers)


def coarse_noise(images: tf.Tensor, config: NoiseConfig, seed: keras.random.SeedGenerator) -> tf.Tensor:
    """`images` with smooth Gaussian noise (drawn on a coarse grid, upsampled) added where there is
    anatomy (pixels above 0), clipped to [0, 1]; each channel (Hounsfield window) draws its own."""
    shape = tf.shape(images)
    grid = keras.random.normal(
        (shape[0], config.resolution, config.resolution, shape[3]), stddev=config.std, seed=seed
    )
    noise = tf.image.resize(grid, shape[1:3], method="bilinear")
    return tf.clip_by_value(tf.where(images > 0, images + noise, images), 0.0, 1.0)


def training_batches(
    images: np.ndarray, config: TrainConfig, seed: int, bleeds: SyntheticBleeds | None = None
) -> tf.data.Dataset:
    """Shuffled (input, target) batches, new random changes every epoch: the target is the augmented
    slice, the input the same slice with denoising noise when `config.noise.std` > 0 and `bleeds` where
    given. A slice's bleed anatomy rides along as extra channels through the geometric augmentation."""
    augment = augmenter(config.augment, seed)
    randomness = keras.random.SeedGenerator(seed + 3)
    gain = config.augment.intensity
    channels = images.shape[-1]
    if bleeds is not None:
        images = np.concatenate([images, bleeds.anatomy(images)], axis=-1)

    def transform(batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        moved = augment(batch, training=True) if augment.layers else batch
        clean, anatomy = moved[..., :channels], moved[..., channels:]
        if gain:
            factor = keras.random.uniform((tf.shape(batch)[0], 1, 1, 1), 1 - gain, 1 + gain, seed=randomness)
            clean = tf.clip_by_value(clean * factor, 0.0, 1.0)
        noisy = coarse_noise(clean, config.noise, randomness) if config.noise.std else clean
        if bleeds is not None:
            noisy = bleeds.add(noisy, anatomy, randomness)
        return noisy, clean

    options = tf.data.Options()
    options.threading.private_threadpool_size = hardware.threads()  # not the host's CPU count
    return (
        tf.data.Dataset.from_tensor_slices(images)
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .map(transform)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )


def learning_rate(
    config: TrainConfig, n_train: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Constant, or cosine-decayed from `config.learning_rate` to 0 over all epochs: the last epochs then
    settle the weights instead of leaving them where one noisy step put them."""
    if config.schedule == "constant":
        return config.learning_rate
    steps = math.ceil(n_train / config.batch_size) * config.epochs
    return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps)


def fit(
    model: keras.Model,
    train: np.ndarray,
    val: np.ndarray,
    config: TrainConfig,
    seed: int,
    callbacks: list[keras.callbacks.Callback],
    bleeds: SyntheticBleeds | None = None,
) -> TrainingResult:
    """Train `model` in place to reproduce its input (with `bleeds` drawn into the training inputs where
    given); the best validation epoch's weights are kept."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate(config, len(train))), loss="mse")
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True
    )
    start = time.perf_counter()
    history = model.fit(
        training_batches(train, config, seed, bleeds),
        validation_data=(val, val),
        epochs=config.epochs,
        shuffle=False,  # the batches come shuffled
        callbacks=[stop, *callbacks],
        verbose=1 if config.progress and sys.stdout.isatty() else 2,
    )  # bar, or a line per epoch
    seconds = time.perf_counter() - start
    losses = {key: [float(v) for v in values] for key, values in history.history.items()}
    epochs = len(losses["loss"])
    return TrainingResult(
        losses, int(np.argmin(losses["val_loss"])) + 1, seconds, len(train) * epochs / seconds
    )
