"""The method's plain convolutional autoencoder: strided convolutions down to a dense bottleneck,
transposed convolutions back up, a sigmoid output in [0, 1] like the input."""

from __future__ import annotations

import keras
from keras import layers

from pipeline.errors import ConfigError
from pipeline.models import register


@register("cae")
def build(input_shape: tuple[int, int, int], filters: list[int], latent_dim: int) -> keras.Model:
    height, width, channels = input_shape
    stride = 2 ** len(filters)
    if not filters or height % stride or width % stride:
        raise ConfigError(f"model.filters: {len(filters)} stride-2 layers need preprocess.image_size "
                          f"divisible by {stride}, got {height}")
    if latent_dim < 1:
        raise ConfigError(f"model.latent_dim must be at least 1, got {latent_dim}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for n in filters:
        x = layers.Conv2D(n, 3, strides=2, padding="same", activation="relu")(x)
    bottom = (height // stride, width // stride, filters[-1])
    x = layers.Flatten()(x)
    x = layers.Dense(latent_dim, activation="relu", name="latent")(x)
    x = layers.Dense(bottom[0] * bottom[1] * bottom[2], activation="relu")(x)
    x = layers.Reshape(bottom)(x)
    for n in reversed(filters):
        x = layers.Conv2DTranspose(n, 3, strides=2, padding="same", activation="relu")(x)
    outputs = layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="cae")
