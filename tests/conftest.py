"""Shared fixtures: settings pointing every path at a temporary folder, and tiny generated data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.config import ROOT, Settings, compose, load_settings

REAL_DATA = ROOT.parent / "shared" / "data" / "brain-ct"

# Small enough that a whole pipeline runs in seconds on two CPU cores.
TINY = [
    "data.image_size=32", "data.n_healthy=60", "data.n_tumor=24", "data.min_size=64", "data.max_size=96",
    "model.filters=[8,16]", "model.latent_dim=16", "train.epochs=2", "train.batch_size=16",
    "train.progress=false", "evaluate.n_examples=2",
]


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
    """`make_settings("train.epochs=1", ...)`: tiny settings writing under tmp_path."""

    def make(*overrides: str) -> Settings:
        return load_settings(compose([*TINY, *tmp_overrides(tmp_path), *overrides]))

    return make


def run_pipeline(settings: Settings) -> None:
    """All five stages in order, in this process, as `dvc repro` runs them."""
    from pipeline import calibrate, download, evaluate, split, train

    for stage in (download, split, train, calibrate, evaluate):
        stage.run(settings)
