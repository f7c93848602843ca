"""A convolutional variational autoencoder: the encoder predicts a Gaussian over the latent space,
training decodes a sample of it (reparameterisation trick) and adds beta * KL(q(z|x) || N(0, I)) to the
reconstruction loss. Scoring decodes the mean, so an image always gets the same anomaly score and the
VAE goes through the same detector code as the plain autoencoders."""

from __future__ import annotations

import math

import keras
from keras import layers, ops
from pydantic import Field

from pipeline.models import register
from pipeline.models.conv import ConvParams, bottom_shape, decode, encode, level_filters


class VaeParams(ConvParams):
    beta: float = Field(ge=0, le=1000)  # weight of the KL term (1: the Gaussian ELBO's balance)


def kl_divergence(mean: keras.KerasTensor, log_var: keras.KerasTensor) -> keras.KerasTensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) per sample, summed over latent dimensions."""
    return -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)


@keras.saving.register_keras_serializable(package="brain_ct")
class GaussianLatent(layers.Layer):
    """Takes (mean, log_var); adds beta * KL / pixels to the model's loss and returns a sample of z in
    training, the mean otherwise.

    The KL term is divided by the number of pixels because the reconstruction loss is the per-pixel
    mean squared error: beta = 1 then weighs them as the per-image ELBO with a Gaussian decoder does.
    """

    def __init__(self, beta: float, pixels: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.beta, self.pixels, self.seed = float(beta), int(pixels), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs: list[keras.KerasTensor], training: bool | None = None) -> keras.KerasTensor:
        mean, log_var = inputs
        self.add_loss(self.beta * ops.mean(kl_divergence(mean, log_var)) / self.pixels)
        if not training:
            return mean
        noise = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        return mean + ops.exp(0.5 * log_var) * noise

    def compute_output_shape(self, input_shape: list[tuple[int, ...]]) -> tuple[int, ...]:
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "beta": self.beta, "pixels": self.pixels, "seed": self.seed}


@register("vae", VaeParams, label="z{latent_dim}-beta{beta:g}")
def build(input_shape: tuple[int, int, int], p: VaeParams) -> keras.Model:
    filters = level_filters(p.width, p.depth)
    bottom = bottom_shape(input_shape, p.depth, filters[-1])
    inputs = keras.Input(shape=input_shape, name="image")
    features = layers.Flatten()(encode(inputs, filters))
    mean = layers.Dense(p.latent_dim, name="z_mean")(features)
    log_var = layers.Dense(p.latent_dim, name="z_log_var")(features)
    z = GaussianLatent(p.beta, math.prod(input_shape), name="z", dtype="float32")(
        [mean, log_var]
    )  # a loss term
    return keras.Model(inputs, decode(z, bottom, filters, input_shape[-1]), name="vae")
