"""Model registry: every architecture is one module that registers a builder and its parameters under a
name, picked by the Hydra group `model` (`model.name`; the other keys are the parameters), and the
parameters that tell its variants apart in MLflow run names (`variant`). The config checks the
parameters against the model's `Params` before any stage runs (`check_params`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from pydantic import ValidationError

from pipeline.core.config import Section
from pipeline.core.errors import ConfigError
from pipeline.core.hardware import dtype_policy
from pipeline.core.registry import Registry


class Params(Section):
    """A model's parameters; `downsampling` is the factor the image size must be divisible by."""

    @property
    def downsampling(self) -> int:
        return 1


@dataclass(frozen=True)
class ModelSpec:
    params: type[Params]
    build: Callable[[tuple[int, int, int], Any], keras.Model]
    label: str  # a format string over `params`: the one or two that tell the model's variants apart


MODELS: Registry[ModelSpec] = Registry("model", "model.name", discover=__name__)
# Images in every forward pass at inference, whatever the caller holds (`infer`).
INFERENCE_BATCH = 8


def register(
    name: str, params: type[Params], label: str
) -> Callable[[Callable[..., keras.Model]], Callable[..., keras.Model]]:
    """Decorator: `@register("unet", UnetParams, label="w{width}") def build(input_shape, params:
    UnetParams) -> keras.Model`; `label` formats the parameters that name a variant (`variant`)."""

    def add(build: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        MODELS.register(name)(ModelSpec(params, build, label))
        return build

    return add


def variant(model: Mapping[str, Any]) -> str:
    """The model and its variant's parameters, as its registration's `label` formats them (`unet-w8`,
    `vae-z128-beta1`): how an MLflow run's name says what was trained. A config section the registry
    cannot read (a job that failed on its config) gives the name alone."""
    name = str(model.get("name"))
    if name not in MODELS:
        return name
    spec = MODELS.get(name)
    try:
        params = spec.params.model_validate({k: v for k, v in model.items() if k != "name"})
    except ValidationError:
        return name
    return f"{name}-{spec.label.format_map(dict(params))}"


def check_params(name: str, params: dict[str, Any], image_size: int) -> Params:
    """The model's validated parameters; a wrong or unknown one, or an image size the model cannot
    halve evenly, is a one-line ConfigError naming the key."""
    spec = MODELS.get(name)
    try:
        checked = spec.params.model_validate(params)
    except ValidationError as err:
        problem = err.errors()[0]
        key = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            raise ConfigError(
                f"model.{key}: not a parameter of model '{name}' "
                f"(it takes {', '.join(spec.params.model_fields)})"
            ) from None
        got = f" (got {problem['input']!r})" if problem["type"] != "missing" else ""
        raise ConfigError(f"model.{key}: {problem['msg']}{got}") from None
    if image_size % checked.downsampling:
        raise ConfigError(
            f"model '{name}' halves the image {checked.downsampling.bit_length() - 1} times: "
            f"preprocess.image_size must be divisible by {checked.downsampling}, got {image_size}"
        )
    return checked


def build_model(
    name: str, input_shape: tuple[int, int, int], params: dict[str, Any], precision: str = "float32"
) -> keras.Model:
    """Build a registered model computing in `precision` (a Keras dtype policy; every builder keeps its
    output layer in float32)."""
    checked = check_params(name, params, input_shape[0])
    with dtype_policy(precision):
        return MODELS.get(name).build(input_shape, checked)


def with_precision(model: keras.Model, name: str, params: dict[str, Any], precision: str) -> keras.Model:
    """The same weights in the same model built to compute in `precision`: a model trained in bfloat16
    is saved and scored in float32 (`pipeline.core.hardware`), and its bfloat16 scores can be compared."""
    copy = build_model(name, model.input_shape[1:], params, precision)
    copy.set_weights(model.get_weights())
    return copy


def load_model(path: str | Path) -> keras.Model:
    """Load a saved model of any registered variant (importing them registers their custom layers)."""
    MODELS.names()
    return keras.models.load_model(path)


def infer(model: keras.Model, images: np.ndarray, batch: int = INFERENCE_BATCH) -> np.ndarray:
    """The model's outputs for `images`, every forward pass on exactly `batch` images (the last one
    padded with zeros). oneDNN and BLAS pick their kernels by batch size, so an image's output would
    otherwise differ in its last bits with how many images it came with; with one shape it is the same
    bit for bit, alone or in any batch, at any place in it."""
    padding = -len(images) % batch
    if padding:
        images = np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])
    return np.asarray(model.predict(images, batch_size=batch, verbose=0))[: len(images) - padding]
