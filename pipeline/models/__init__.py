"""Model registry: every architecture is one module that registers a builder under a name,
picked by the Hydra group `model` (`model.name`, the other keys are the builder's arguments)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from pipeline.errors import ConfigError
from pipeline.hardware import dtype_policy

Builder = Callable[..., keras.Model]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: `@register("cae") def build(input_shape, **params) -> keras.Model`."""

    def add(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = builder
        return builder

    return add


def _load_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def build_model(name: str, input_shape: tuple[int, int, int], params: dict[str, Any],
                precision: str = "float32") -> keras.Model:
    """Build a registered model computing in `precision` (a Keras dtype policy; every builder keeps its
    output layer in float32); unknown names or arguments are config errors, not tracebacks."""
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError(f"model.name: unknown model '{name}' (available: {', '.join(available())})")
    builder = _REGISTRY[name]
    accepted = set(inspect.signature(builder).parameters) - {"input_shape"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: not a parameter of model '{name}' "
                          f"(it takes {', '.join(sorted(accepted))})")
    with dtype_policy(precision):
        return builder(input_shape, **params)


def with_precision(model: keras.Model, name: str, params: dict[str, Any], precision: str) -> keras.Model:
    """The same weights in the same model built to compute in `precision`: a model trained in bfloat16
    is saved and scored in float32 (`pipeline.hardware`), and its bfloat16 scores can be compared."""
    copy = build_model(name, model.input_shape[1:], params, precision)
    copy.set_weights(model.get_weights())
    return copy


def load_model(path: str | Path) -> keras.Model:
    """Load a saved model of any registered variant (importing them registers their custom layers)."""
    _load_all()
    return keras.models.load_model(path)
