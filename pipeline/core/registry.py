"""One registration pattern for every extension point: models, scores, threshold rules, data sources.

A component registers itself under a name (`@MODELS.register("cae")`); the config's allowed values are
the registry's names, and an unknown name is a one-line config error that lists them. A registry may
`discover` a package: the first lookup imports each of its modules, so a new model is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pipeline.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; `key` is the config key that picks one (for error messages)."""

    def __init__(self, kind: str, key: str, discover: str | None = None) -> None:
        self.kind, self.key, self._discover = kind, key, discover
        self._entries: dict[str, T] = {}
        self._discovered = discover is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator (or plain call) that adds `entry` under `name`; a name registered twice is a bug."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def _load(self) -> None:
        if not self._discovered:
            self._discovered = True
            package = importlib.import_module(self._discover)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self._discover}.{module.name}")

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def check(self, name: str) -> str:
        """`name` if registered, else a ConfigError naming the key and the available names."""
        if name not in self:
            raise ConfigError(
                f"{self.key}: unknown {self.kind} '{name}' (available: {', '.join(self.names())})"
            )
        return name

    def get(self, name: str) -> T:
        return self._entries[self.check(name)]

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(list(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries
