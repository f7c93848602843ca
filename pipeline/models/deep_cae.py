"""A deeper autoencoder (the method's "more convolutional layers"): several convolutions per
resolution level and more levels, optionally batch-normalised."""

from __future__ import annotations

import keras

from pipeline.models import register
from pipeline.models.conv import conv_autoencoder


@register("deep_cae")
def build(input_shape: tuple[int, int, int], width: int, depth: int, convs_per_level: int, latent_dim: int,
          batch_norm: bool) -> keras.Model:
    return conv_autoencoder(input_shape, width=width, depth=depth, latent_dim=latent_dim,
                            convs_per_level=convs_per_level, batch_norm=batch_norm, name="deep_cae")
