"""The method's plain convolutional autoencoder: strided convolutions down to a dense bottleneck,
transposed convolutions back up, a sigmoid output in [0, 1] like the input."""

from __future__ import annotations

import keras

from pipeline.models import register
from pipeline.models.conv import conv_autoencoder


@register("cae")
def build(input_shape: tuple[int, int, int], width: int, depth: int, latent_dim: int) -> keras.Model:
    return conv_autoencoder(input_shape, width=width, depth=depth, latent_dim=latent_dim, name="cae")
