"""A U-Net autoencoder: skip connections carry each level's features to the decoder, so healthy
detail (bone edges, sulci, the skull base) comes back sharp instead of blurred, and the residual is
left to what the model cannot explain. With no bottleneck to squeeze through, it would copy anomalies
too; trained as a denoiser (`train.noise`), it learns to replace intensity patterns that do not belong
to a healthy slice with ones that do (Kascenas et al., MIDL 2022), which is what exposes a lesion."""

from __future__ import annotations

import keras
from keras import layers

from pipeline.models import register
from pipeline.models.conv import LevelParams, conv, level_filters


class UnetParams(LevelParams):
    batch_norm: bool


@register("unet", UnetParams, label="w{width}")
def build(input_shape: tuple[int, int, int], p: UnetParams) -> keras.Model:
    filters, batch_norm = level_filters(p.width, p.depth), p.batch_norm
    inputs = keras.Input(shape=input_shape, name="image")
    x, skips = inputs, []
    for n in filters:
        x = conv(conv(x, n, batch_norm=batch_norm), n, batch_norm=batch_norm)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = conv(conv(x, filters[-1] * 2, batch_norm=batch_norm), filters[-1] * 2, batch_norm=batch_norm)
    for n, skip in zip(reversed(filters), reversed(skips), strict=True):
        x = layers.Concatenate()([layers.UpSampling2D()(x), skip])
        x = conv(conv(x, n, batch_norm=batch_norm), n, batch_norm=batch_norm)
    outputs = layers.Conv2D(input_shape[-1], 1, activation="sigmoid", name="reconstruction", dtype="float32")(
        x
    )
    return keras.Model(inputs, outputs, name="unet")
