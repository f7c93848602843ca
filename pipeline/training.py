"""Fit an autoencoder to reconstruct healthy slices: Adam, MSE, early stopping on healthy
validation loss, seeded so that a rerun on CPU gives the same numbers."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.config import TrainConfig


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


def fit(model: keras.Model, train: np.ndarray, val: np.ndarray, config: TrainConfig,
        callbacks: list[keras.callbacks.Callback]) -> TrainingResult:
    """Train `model` in place to reproduce its input; the best validation epoch's weights are kept."""
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="mse")
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience,
                                         restore_best_weights=True)
    start = time.perf_counter()
    history = model.fit(train, train, validation_data=(val, val), epochs=config.epochs,
                        batch_size=config.batch_size, shuffle=True, callbacks=[stop, *callbacks],
                        verbose=1 if config.progress and sys.stdout.isatty() else 2)  # bar, or a line per epoch
    seconds = time.perf_counter() - start
    losses = {key: [float(v) for v in values] for key, values in history.history.items()}
    epochs = len(losses["loss"])
    return TrainingResult(losses, int(np.argmin(losses["val_loss"])) + 1, seconds,
                          len(train) * epochs / seconds)
