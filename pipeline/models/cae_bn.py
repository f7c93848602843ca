"""The method's autoencoder with BatchNormalization after every convolution (its authors' next step):
steadier training at higher learning rates."""

from __future__ import annotations

import keras

from pipeline.models import register
from pipeline.models.conv import conv_autoencoder


@register("cae_bn")
def build(input_shape: tuple[int, int, int], width: int, depth: int, latent_dim: int) -> keras.Model:
    return conv_autoencoder(input_shape, width=width, depth=depth, latent_dim=latent_dim, batch_norm=True,
                            name="cae_bn")
