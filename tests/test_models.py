"""The model registry and every registered variant: builds, trains, round-trips through a .keras file."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.models import MODELS, Params, build_model, load_model, register, variant
from pipeline.models.training import fit
from pipeline.models.vae import GaussianLatent, kl_divergence
from tests.conftest import train_config

# Each variant at its smallest: 32x32 slices, a few channels (no weights can be downloaded in tests).
TINY_VARIANTS = {
    "cae": {"width": 4, "depth": 2, "latent_dim": 8},
    "cae_bn": {"width": 4, "depth": 2, "latent_dim": 8},
    "deep_cae": {"width": 4, "depth": 3, "convs_per_level": 2, "batch_norm": True, "latent_dim": 8},
    "vae": {"width": 4, "depth": 2, "latent_dim": 8, "beta": 1.0},
    "unet": {"width": 4, "depth": 2, "batch_norm": True},
    "pretrained_encoder": {
        "backbone": "MobileNetV3Small",
        "weights": None,
        "trainable": True,
        "width": 4,
        "latent_dim": 8,
    },
}
SHAPE = (32, 32, 1)
# How MLflow run names show each variant of TINY_VARIANTS: the parameters that tell them apart.
VARIANT_NAMES = {
    "cae": "cae-w4-z8",
    "cae_bn": "cae_bn-w4-z8",
    "deep_cae": "deep_cae-w4-z8",
    "vae": "vae-z8-beta1",
    "unet": "unet-w4",
    "pretrained_encoder": "pretrained_encoder-MobileNetV3Small",
}


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def test_every_registered_variant_is_covered() -> None:
    assert sorted(TINY_VARIANTS) == MODELS.names()


@pytest.fixture(scope="module", params=sorted(TINY_VARIANTS))
def trained(request: pytest.FixtureRequest) -> tuple[str, keras.Model]:
    """Each variant after one epoch of two batches on random images."""
    keras.utils.set_random_seed(0)
    model = build_model(request.param, SHAPE, TINY_VARIANTS[request.param])
    result = fit(model, _images(8), _images(4, seed=1), train_config(noise=0.1), seed=0, callbacks=[])
    assert np.isfinite(result.history["loss"][0]) and np.isfinite(result.history["val_loss"][0])
    return request.param, model


def test_variant_reconstructs_the_input_shape_in_unit_range(trained: tuple[str, keras.Model]) -> None:
    out = trained[1].predict(_images(3), verbose=0)
    assert out.shape == (3, *SHAPE)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_variant_scores_deterministically(trained: tuple[str, keras.Model]) -> None:
    """The detector's score must not depend on the call (the VAE decodes its mean at inference)."""
    x = _images(2)
    np.testing.assert_array_equal(trained[1].predict(x, verbose=0), trained[1].predict(x, verbose=0))


def test_variant_round_trips_through_a_keras_file(trained: tuple[str, keras.Model], tmp_path: Path) -> None:
    name, model = trained
    model.save(tmp_path / f"{name}.keras")
    loaded = keras.models.load_model(tmp_path / f"{name}.keras")
    x = _images(2, seed=3)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_kl_divergence_of_known_gaussians() -> None:
    """KL(N(mu, s^2) || N(0, 1)) = (mu^2 + s^2 - 1) / 2 - log s, summed over dimensions."""
    mean = np.array([[0.0, 0.0], [1.0, -2.0]], dtype=np.float32)
    log_var = np.array([[0.0, 0.0], [np.log(4.0), 0.0]], dtype=np.float32)
    expected = [0.0, (1 + 4 - 1) / 2 - np.log(2.0) + (4 + 1 - 1) / 2]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kl_divergence(mean, log_var)), expected, rtol=1e-6)


def test_vae_latent_adds_beta_weighted_kl_and_samples_only_in_training() -> None:
    layer = GaussianLatent(beta=2.0, pixels=10, seed=1)
    mean = np.array([[1.0, -2.0]], dtype=np.float32)
    log_var = np.array([[np.log(4.0), 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer([mean, log_var], training=False)), mean)
    kl = (1 + 4 - 1) / 2 - np.log(2.0) + (4 + 1 - 1) / 2
    np.testing.assert_allclose(float(layer.losses[0]), 2.0 * kl / 10, rtol=1e-6)
    sample = keras.ops.convert_to_numpy(layer([mean, log_var], training=True))
    assert not np.allclose(sample, mean)


def test_backbone_from_scratch_learns_its_normalisation_quickly() -> None:
    model = build_model("pretrained_encoder", SHAPE, TINY_VARIANTS["pretrained_encoder"])
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == 0.9 for layer in norms)


def test_frozen_backbone_trains_the_decoder_only() -> None:
    params = {**TINY_VARIANTS["pretrained_encoder"], "trainable": False}
    model = build_model("pretrained_encoder", SHAPE, params)
    frozen = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    assert not frozen.trainable_weights
    assert model.trainable_weights


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"weights": "/nowhere/weights.h5"}, r"model\.weights: .*'/nowhere/weights.h5' is not a file"),
        (
            {"backbone": "ResNet9000"},
            r"model\.backbone: Input should be 'MobileNetV3Small'.* \(got 'ResNet9000'\)",
        ),
    ],
)
def test_pretrained_encoder_config_errors(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model("pretrained_encoder", SHAPE, {**TINY_VARIANTS["pretrained_encoder"], **params})


def test_pretrained_encoder_loads_a_local_weights_file(tmp_path: Path) -> None:
    """`model.weights=PATH`: the backbone starts from the file's weights (here, saved from another one)."""
    source = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False, weights=None)
    source.save_weights(tmp_path / "backbone.weights.h5")
    weights = str(tmp_path / "backbone.weights.h5")
    model = build_model(
        "pretrained_encoder", SHAPE, {**TINY_VARIANTS["pretrained_encoder"], "weights": weights}
    )
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    for loaded, saved in zip(backbone.weights, source.weights, strict=True):
        np.testing.assert_array_equal(loaded.numpy(), saved.numpy())
    model.save(tmp_path / "model.keras")  # the backbone called in inference mode survives a round trip
    x = _images(2)
    np.testing.assert_allclose(
        load_model(tmp_path / "model.keras").predict(x, verbose=0),
        model.predict(x, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_unknown_model_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match=r"model\.name: unknown model 'nope' \(available: cae, cae_bn, "):
        build_model("nope", SHAPE, {})


def test_unknown_parameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.filters: not a parameter of model 'cae'"):
        build_model("cae", SHAPE, {**TINY_VARIANTS["cae"], "filters": [8]})


def test_image_size_must_suit_the_strides() -> None:
    with pytest.raises(ConfigError, match="image_size must be divisible by 8, got 36"):
        build_model("cae", (36, 36, 1), {"width": 4, "depth": 3, "latent_dim": 8})


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register("cae", Params, label="")(lambda input_shape, params: None)


def test_each_variant_is_named_by_the_parameters_that_tell_it_apart() -> None:
    named = {name: variant({"name": name, **params}) for name, params in TINY_VARIANTS.items()}
    assert named == VARIANT_NAMES


@pytest.mark.parametrize(
    "section",
    [{"name": "nope", "width": 4}, {"name": "unet", "width": "${oops}", "depth": 2, "batch_norm": False}],
)
def test_a_model_section_the_registry_cannot_read_is_named_by_the_model_alone(section: dict) -> None:
    """A job that failed on its config still gets a run named after the model it asked for."""
    assert variant(section) == section["name"]
