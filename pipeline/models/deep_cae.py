"""A deeper autoencoder (the method's "more convolutional layers"): several convolutions per
resolution level and more levels, optionally batch-normalised."""

from __future__ import annotations

import keras
from pydantic import Field

from pipeline.models import register
from pipeline.models.conv import ConvParams, conv_autoencoder


class DeepParams(ConvParams):
    convs_per_level: int = Field(ge=1, le=8)  # same-size convolutions per level, the last one strided
    batch_norm: bool


@register("deep_cae", DeepParams, label="w{width}-z{latent_dim}")
def build(input_shape: tuple[int, int, int], p: DeepParams) -> keras.Model:
    return conv_autoencoder(
        input_shape,
        width=p.width,
        depth=p.depth,
        latent_dim=p.latent_dim,
        convs_per_level=p.convs_per_level,
        batch_norm=p.batch_norm,
        name="deep_cae",
    )
