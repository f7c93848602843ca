"""An ImageNet backbone from Keras Applications as the encoder, a convolutional decoder trained from
scratch. The grey slice is repeated into three channels and scaled to [0, 255], the range these
backbones normalise internally. Weights: "imagenet" (downloaded once by Keras), a local weights file
of the backbone without its top, or null for random initialisation; frozen or fine-tuned. Pretrained
BatchNormalization layers keep their statistics (inference mode) even when fine-tuned."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import keras
from keras import layers
from pydantic import Field, field_validator

from pipeline.core.errors import ConfigError
from pipeline.models import Params, register
from pipeline.models.conv import bottom_shape, decode, level_filters

# Backbones that take [0, 255] input and downsample by 32.
BACKBONES = {
    "MobileNetV3Small": keras.applications.MobileNetV3Small,
    "MobileNetV3Large": keras.applications.MobileNetV3Large,
    "EfficientNetB0": keras.applications.EfficientNetB0,
    "EfficientNetV2B0": keras.applications.EfficientNetV2B0,
}
Backbone = Literal[tuple(BACKBONES)]
BACKBONE_STRIDE_LEVELS = 5
# Keras Applications' BN momentum (0.999) lets moving statistics of a randomly initialised backbone
# lag far behind after a few hundred steps, and inference then sees the wrong normalisation.
SCRATCH_BN_MOMENTUM = 0.9


class EncoderParams(Params):
    backbone: Backbone
    weights: str | None  # imagenet, a local no-top weights file, or None (random initialisation)
    trainable: bool
    width: int = Field(ge=1, le=1024)  # decoder channels at full resolution, doubled per level
    latent_dim: int = Field(ge=1, le=65536)

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, weights: str | None) -> str | None:
        if weights not in (None, "imagenet") and not Path(weights).is_file():
            raise ValueError(f"'{weights}' is not a file (use imagenet, a weights file or null)")
        return weights

    @property
    def downsampling(self) -> int:
        return 2**BACKBONE_STRIDE_LEVELS


def _backbone(name: str, shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    try:
        return BACKBONES[name](input_shape=shape, include_top=False, weights=weights)
    except Exception as err:  # Keras raises a bare Exception when the download fails
        if weights != "imagenet":
            raise
        raise ConfigError(
            f"model.weights: could not download the ImageNet weights of {name} ({err}); "
            "give a local weights file (model.weights=PATH) or train from scratch "
            "(model.weights=null)"
        ) from err


def _to_rgb(inputs: keras.KerasTensor, channels: int) -> keras.KerasTensor:
    """The backbone's three channels: one grey channel three times, three channels as they are (three
    Hounsfield windows, or a slice between its two neighbours), any other number (`preprocess.extra_windows`,
    `preprocess.neighbours`) mixed to three by a learned 1x1 convolution."""
    if channels == 3:
        return inputs
    if channels == 1:
        return layers.Concatenate()([inputs] * 3)
    return layers.Conv2D(3, 1, name="to_rgb")(inputs)


@register("pretrained_encoder", EncoderParams, label="{backbone}")
def build(input_shape: tuple[int, int, int], p: EncoderParams) -> keras.Model:
    filters = level_filters(p.width, BACKBONE_STRIDE_LEVELS)
    bottom = bottom_shape(input_shape, BACKBONE_STRIDE_LEVELS, filters[-1])
    encoder = _backbone(p.backbone, (*input_shape[:2], 3), p.weights)
    encoder.trainable = p.trainable
    if p.weights is None:
        for layer in encoder.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    inputs = keras.Input(shape=input_shape, name="image")
    rgb = _to_rgb(inputs, input_shape[-1])
    # Pretrained statistics stay as they are (Keras' fine-tuning advice); one from scratch learns its own.
    features = encoder(layers.Rescaling(255.0)(rgb), training=False if p.weights else None)
    z = layers.Dense(p.latent_dim, activation="relu", name="latent")(layers.Flatten()(features))
    return keras.Model(inputs, decode(z, bottom, filters, input_shape[-1]), name="pretrained_encoder")
