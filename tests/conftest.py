"""Shared fixtures: settings pointing every path at a temporary folder, and tiny generated data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pipeline.config import Settings, compose, load_settings

# conf/experiment/smoke.yaml: small enough that a whole pipeline runs in a minute on two CPU cores.
TINY = ["experiment=smoke"]


def tmp_overrides(tmp: Path) -> list[str]:
    """Overrides that keep every output, the cache and the MLflow store under `tmp`."""
    return [f"paths.{name}={tmp / folder}" for name, folder in {
        "raw": "data/raw", "manifests": "data/manifests", "splits": "data/splits", "cache": "data/cache",
        "model": "models", "reports": "reports"}.items()] + [
        f"mlflow.tracking_uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
        f"mlflow.artifact_root={tmp / 'mlruns' / 'artifacts'}"]


@pytest.fixture(autouse=True)
def _local_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests use the store their settings name, never a server from the environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """`make_settings("train.epochs=1", ...)`: settings writing under tmp_path, tiny unless `base` says."""

    def make(*overrides: str, base: Sequence[str] = TINY) -> Settings:
        return load_settings(compose([*base, *tmp_overrides(tmp_path), *overrides]))

    return make


def run_pipeline(settings: Settings) -> None:
    """All five stages in order, in this process, as `dvc repro` runs them."""
    from pipeline import calibrate, download, evaluate, split, train

    for stage in (download, split, train, calibrate, evaluate):
        stage.run(settings)
