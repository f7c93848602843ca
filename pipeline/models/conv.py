"""The convolutional pieces the variants share: a strided encoder, a dense bottleneck, and a decoder
that mirrors the encoder with transposed convolutions up to a sigmoid image in [0, 1]."""

from __future__ import annotations

import math

import keras
from keras import layers
from pydantic import Field

from pipeline.models import Params


class LevelParams(Params):
    """A stack of resolution levels: `width` channels at the first, doubled at each of `depth` halvings."""

    width: int = Field(ge=1, le=1024)
    depth: int = Field(ge=1, le=8)

    @property
    def downsampling(self) -> int:
        return 2**self.depth


class ConvParams(LevelParams):
    """The convolutional autoencoder family (cae, cae_bn, deep_cae, vae): levels and a dense bottleneck."""

    latent_dim: int = Field(ge=1, le=65536)


def level_filters(width: int, depth: int) -> list[int]:
    """Channels per resolution level: `width` at the first, doubling at each stride-2 step."""
    return [width * 2**level for level in range(depth)]


def bottom_shape(input_shape: tuple[int, int, int], depth: int, channels: int) -> tuple[int, int, int]:
    """The feature map shape after `depth` stride-2 levels (the config checked that they divide evenly)."""
    height, width, _ = input_shape
    return height // 2**depth, width // 2**depth, channels


def conv(
    x: keras.KerasTensor, filters: int, *, strides: int = 1, transpose: bool = False, batch_norm: bool = False
) -> keras.KerasTensor:
    """3x3 convolution + ReLU; with batch norm the convolution drops its bias and BN sits before ReLU."""
    layer = layers.Conv2DTranspose if transpose else layers.Conv2D
    x = layer(
        filters,
        3,
        strides=strides,
        padding="same",
        use_bias=not batch_norm,
        activation=None if batch_norm else "relu",
    )(x)
    if batch_norm:
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    return x


def encode(
    x: keras.KerasTensor, filters: list[int], *, convs_per_level: int = 1, batch_norm: bool = False
) -> keras.KerasTensor:
    """Per level: `convs_per_level - 1` same-size convolutions, then one stride-2 convolution."""
    for n in filters:
        for _ in range(convs_per_level - 1):
            x = conv(x, n, batch_norm=batch_norm)
        x = conv(x, n, strides=2, batch_norm=batch_norm)
    return x


def decode(
    z: keras.KerasTensor,
    bottom: tuple[int, int, int],
    filters: list[int],
    channels: int,
    *,
    convs_per_level: int = 1,
    batch_norm: bool = False,
) -> keras.KerasTensor:
    """From a latent vector back to an image: dense to the bottom feature map, then the encoder mirrored."""
    x = layers.Dense(math.prod(bottom), activation="relu")(z)
    x = layers.Reshape(bottom)(x)
    for n in reversed(filters):
        x = conv(x, n, strides=2, transpose=True, batch_norm=batch_norm)
        for _ in range(convs_per_level - 1):
            x = conv(x, n, batch_norm=batch_norm)
    return layers.Conv2D(
        channels, 3, padding="same", activation="sigmoid", name="reconstruction", dtype="float32"
    )(x)


def conv_autoencoder(
    input_shape: tuple[int, int, int],
    *,
    width: int,
    depth: int,
    latent_dim: int,
    convs_per_level: int = 1,
    batch_norm: bool = False,
    name: str,
) -> keras.Model:
    """Encoder, dense bottleneck of `latent_dim` units, decoder: the family of cae, cae_bn and deep_cae."""
    filters = level_filters(width, depth)
    bottom = bottom_shape(input_shape, depth, filters[-1])
    inputs = keras.Input(shape=input_shape, name="image")
    x = encode(inputs, filters, convs_per_level=convs_per_level, batch_norm=batch_norm)
    z = layers.Dense(latent_dim, activation="relu", name="latent")(layers.Flatten()(x))
    outputs = decode(
        z, bottom, filters, input_shape[-1], convs_per_level=convs_per_level, batch_norm=batch_norm
    )
    return keras.Model(inputs, outputs, name=name)
