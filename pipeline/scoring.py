"""Anomaly scores: how badly the autoencoder reconstructs each slice."""

from __future__ import annotations

import keras
import numpy as np


def reconstruct(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The model's output for a batch (silent: callers that loop show one progress bar of their own)."""
    return model.predict(images, batch_size=batch_size, verbose=0)


def reconstruction_errors(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Per-image mean squared error, the method's anomaly score."""
    return np.mean(np.square(images - reconstructions), axis=tuple(range(1, images.ndim)))


def reconstruct_and_score(model: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reconstructions and anomaly scores of a preprocessed batch (an empty batch gives empty arrays)."""
    if not len(images):
        return images, np.empty(0, dtype=np.float32)
    reconstructions = reconstruct(model, images)
    return reconstructions, reconstruction_errors(images, reconstructions)


def score(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return reconstruct_and_score(model, images)[1]
