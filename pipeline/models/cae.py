"""The method's plain convolutional autoencoder: strided convolutions down to a dense bottleneck,
transposed convolutions back up, a sigmoid output in [0, 1] like the input."""

from __future__ import annotations

import keras

from pipeline.models import register
from pipeline.models.conv import ConvParams, conv_autoencoder


@register("cae", ConvParams, label="w{width}-z{latent_dim}")
def build(input_shape: tuple[int, int, int], p: ConvParams) -> keras.Model:
    return conv_autoencoder(input_shape, width=p.width, depth=p.depth, latent_dim=p.latent_dim, name="cae")
