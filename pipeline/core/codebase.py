"""The pipeline's own import graph, read from its source: which of its modules, and which installed
distributions, a module runs with.

Two things rest on it instead of on hand-kept lists: the tests check that each DVC stage's `deps`
cover every file its entry point imports, and the packaged detector ships exactly the modules that
inference imports and pins exactly the distributions they import. Imports inside functions count
(they run too); a package whose registry `discover`s its modules imports all of them.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

PACKAGE = "pipeline"
SOURCE = Path(__file__).resolve().parents[1]
# What only judges whether the settings are valid: every stage loads it, but it changes no stage's outputs,
# and the `check` stage, which every other stage depends on, reruns when it changes (and stops DVC where
# the settings no longer pass). No other stage depends on it, so that editing a score reruns no download.
VALIDATION = "pipeline.stages.components"


def module_file(name: str) -> Path | None:
    """The source file of module `name` of this package (a package's `__init__.py`), or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = SOURCE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _discovered(tree: ast.AST, name: str) -> set[str]:
    """Modules a `Registry(..., discover=...)` in this module imports when first used."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Registry":
            for keyword in node.keywords:
                if keyword.arg == "discover":
                    value = keyword.value
                    package = name if isinstance(value, ast.Name) and value.id == "__name__" else value.value
                    folder = module_file(package).parent
                    found |= {
                        f"{package}.{file.stem}" for file in folder.glob("*.py") if file.stem != "__init__"
                    }
    return found


@cache
def _imports(name: str) -> tuple[frozenset[str], frozenset[str]]:
    """(modules of this package, top-level names of other packages) that module `name` imports."""
    path = module_file(name)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    own, other = set(_discovered(tree, name)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if module_file(target):
                own.add(target)
            elif target.split(".")[0] != PACKAGE:
                other.add(target.split(".")[0])
    return frozenset(own), frozenset(other - {"__future__"})


def closure(*modules: str, skip: frozenset[str] = frozenset()) -> tuple[set[str], set[str]]:
    """Every module of this package that importing `modules` runs (parent packages included), and
    the top-level names of the other packages they import; `skip`: modules left out, with what only
    they import."""
    own: set[str] = set()
    other: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in own or name in skip:
            continue
        own.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b
        imported, external = _imports(name)
        todo += imported
        other |= external
    return own, other


def files(modules: set[str]) -> list[Path]:
    return sorted(module_file(name) for name in modules)


def distributions(top_level: set[str]) -> list[str]:
    """The installed distributions that provide these top-level import names (the standard library
    and names no distribution provides are left out)."""
    provided = packages_distributions()
    names = {dist for name in top_level - set(sys.stdlib_module_names) for dist in provided.get(name, [])}
    return sorted(names, key=str.lower)
