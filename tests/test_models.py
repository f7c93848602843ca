"""The model registry and the method's autoencoder."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.models import available, build_model, register


def test_cae_reconstructs_the_input_shape_in_unit_range() -> None:
    model = build_model("cae", (32, 32, 1), {"filters": [8, 16], "latent_dim": 8})
    out = model.predict(np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32), verbose=0)
    assert out.shape == (3, 32, 32, 1)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_unknown_model_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="available: .*cae"):
        build_model("nope", (32, 32, 1), {})


def test_unknown_parameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.depth: not a parameter of model 'cae'"):
        build_model("cae", (32, 32, 1), {"filters": [8], "latent_dim": 8, "depth": 3})


def test_image_size_must_suit_the_strides() -> None:
    with pytest.raises(ConfigError, match="divisible by 8"):
        build_model("cae", (36, 36, 1), {"filters": [8, 8, 8], "latent_dim": 8})


def test_a_name_registers_once() -> None:
    assert "cae" in available()
    with pytest.raises(ValueError, match="registered twice"):
        register("cae")(lambda input_shape: None)


def test_saved_model_round_trips(tmp_path: Path) -> None:
    model = build_model("cae", (16, 16, 1), {"filters": [4], "latent_dim": 4})
    x = np.random.default_rng(1).random((2, 16, 16, 1), dtype=np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
