"""The method's autoencoder with BatchNormalization after every convolution (its authors' next step):
steadier training at higher learning rates."""

from __future__ import annotations

import keras

from pipeline.models import register
from pipeline.models.conv import ConvParams, conv_autoencoder


@register("cae_bn", ConvParams, label="w{width}-z{latent_dim}")
def build(input_shape: tuple[int, int, int], p: ConvParams) -> keras.Model:
    return conv_autoencoder(
        input_shape, width=p.width, depth=p.depth, latent_dim=p.latent_dim, batch_norm=True, name="cae_bn"
    )
