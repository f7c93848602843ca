"""The tree shows the architecture: `pipeline`'s packages are layers, each importing only the ones below
it (imports inside functions count), so that the data flow reads top-down with no arrow back up and no
cycle. At the top, outside every package, are the commands a user runs: `python -m pipeline` (a whole
run, for sweeps), `pipeline.predict` and `pipeline.compare`."""

from __future__ import annotations

import ast

import pytest

from pipeline.core import codebase

# lowest first: what the settings and files are, the data, the models, how a detector is judged, the
# detector, the detector as an MLflow model, predict's inputs, the DVC stages, the team's stack
LAYERS = ("core", "data", "models", "evaluation", "detection", "serving", "inputs", "stages", "team")
PACKAGE_DIRS = sorted(path.name for path in codebase.SOURCE.iterdir() if (path / "__init__.py").is_file())


def layer(module: str) -> str | None:
    """The package of `pipeline.<package>...`, or None for a module at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGE_DIRS else None


def imported(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = (
                [f"{node.module}.{alias.name}" for alias in node.names]
                if node.module == codebase.PACKAGE
                else []
            )
            found |= {node.module, *names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith(f"{codebase.PACKAGE}.")}


def test_every_package_has_its_layer() -> None:
    assert sorted(LAYERS) == PACKAGE_DIRS


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    upward = {
        f"{path.relative_to(codebase.SOURCE.parent)} imports {name}"
        for path in sorted((codebase.SOURCE / package).rglob("*.py"))
        for name in imported(path)
        if layer(name) not in allowed and codebase.module_file(name)
    }
    assert not upward, "an arrow back up (or into a command at the top): " + "; ".join(sorted(upward))
