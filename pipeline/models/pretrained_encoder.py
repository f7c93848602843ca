"""An ImageNet backbone from Keras Applications as the encoder, a convolutional decoder trained from
scratch. The grey slice is repeated into three channels and scaled to [0, 255], the range these
backbones normalise internally. Weights: "imagenet" (downloaded once by Keras), a local weights file
of the backbone without its top, or null for random initialisation; frozen or fine-tuned. Pretrained
BatchNormalization layers keep their statistics (inference mode) even when fine-tuned."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from pipeline.errors import ConfigError
from pipeline.models import register
from pipeline.models.conv import bottom_shape, check_latent, decode, level_filters

# Backbones that take [0, 255] input and downsample by 32.
BACKBONES = {
    "MobileNetV3Small": keras.applications.MobileNetV3Small,
    "MobileNetV3Large": keras.applications.MobileNetV3Large,
    "EfficientNetB0": keras.applications.EfficientNetB0,
    "EfficientNetV2B0": keras.applications.EfficientNetV2B0,
}
BACKBONE_STRIDE_LEVELS = 5
# Keras Applications' BN momentum (0.999) lets moving statistics of a randomly initialised backbone
# lag far behind after a few hundred steps, and inference then sees the wrong normalisation.
SCRATCH_BN_MOMENTUM = 0.9


def _backbone(name: str, shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown backbone '{name}' (available: {', '.join(BACKBONES)})")
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise ConfigError(f"model.weights: '{weights}' is not a file (use imagenet, a weights file or null)")
    try:
        return BACKBONES[name](input_shape=shape, include_top=False, weights=weights)
    except Exception as err:  # Keras raises a bare Exception when the download fails
        if weights != "imagenet":
            raise
        raise ConfigError(f"model.weights: could not download the ImageNet weights of {name} ({err}); "
                          "give a local weights file (model.weights=PATH) or train from scratch "
                          "(model.weights=null)") from err


@register("pretrained_encoder")
def build(input_shape: tuple[int, int, int], backbone: str, weights: str | None, trainable: bool,
          width: int, latent_dim: int) -> keras.Model:
    check_latent(latent_dim)
    filters = level_filters(width, BACKBONE_STRIDE_LEVELS)
    bottom = bottom_shape(input_shape, BACKBONE_STRIDE_LEVELS, filters[-1])
    encoder = _backbone(backbone, (*input_shape[:2], 3), weights)
    encoder.trainable = trainable
    if weights is None:
        for layer in encoder.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    inputs = keras.Input(shape=input_shape, name="image")
    rgb = layers.Concatenate()([inputs] * 3) if input_shape[-1] == 1 else inputs
    # Pretrained statistics stay as they are (Keras' fine-tuning advice); one from scratch learns its own.
    features = encoder(layers.Rescaling(255.0)(rgb), training=False if weights else None)
    z = layers.Dense(latent_dim, activation="relu", name="latent")(layers.Flatten()(features))
    return keras.Model(inputs, decode(z, bottom, filters, input_shape[-1]), name="pretrained_encoder")
