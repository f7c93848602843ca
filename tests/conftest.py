"""Shared fixtures: settings pointing every path at a temporary folder, and tiny generated data."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import requests

from pipeline.core.config import (
    DicomWindow,
    HeadConfig,
    PreprocessConfig,
    ScoreConfig,
    Settings,
    TrainConfig,
)
from pipeline.stages.entrypoint import compose, load_settings
from pipeline.team.stack import free_port

# conf/experiment/smoke.yaml: small enough that a whole pipeline runs in a minute on two CPU cores.
TINY = ["experiment=smoke"]


BRAIN_WINDOW = DicomWindow(level=40, width=80)


def preprocess_config(image_size: int, head: bool = False) -> PreprocessConfig:
    """The whole slice resized (the method's preprocessing), or with `head` the project's: the head
    found, masked, cropped and normalised."""
    return PreprocessConfig(
        image_size=image_size,
        dicom_window=BRAIN_WINDOW,
        normalize=head,
        head=HeadConfig(mask=head, crop=head, threshold=0.1, margin=0.02),
    )


def train_config(
    epochs: int = 1, batch_size: int = 4, augment: bool = True, noise: float = 0.0
) -> TrainConfig:
    """A short training run, with the default augmentation (or none) and optional denoising noise."""
    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=1e-3,
        early_stopping_patience=1,
        progress=False,
        precision="float32",
        schedule="constant",
        noise={"std": noise, "resolution": 4},
        bleeds={"probability": 0.0, "contrast": (15, 60)},
        augment={
            "rotation": 10 * augment,
            "shift": 0.05 * augment,
            "flip": augment,
            "intensity": 0.1 * augment,
        },
    )


def score_config(kind: str = "mse", region: str = "image") -> ScoreConfig:
    return ScoreConfig(kind=kind, region=region, percentile=99, smoothing=1.0)


def tmp_overrides(tmp: Path) -> list[str]:
    """Overrides that keep every output, the cache and the MLflow store under `tmp`."""
    return [
        f"paths.{name}={tmp / folder}"
        for name, folder in {
            "raw": "data/raw",
            "manifests": "data/manifests",
            "splits": "data/splits",
            "cache": "data/cache",
            "model": "models",
            "reports": "reports",
        }.items()
    ] + [
        f"mlflow.tracking_uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
        f"mlflow.artifact_root={tmp / 'mlruns' / 'artifacts'}",
    ]


@pytest.fixture(autouse=True)
def _local_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests use the store their settings name, never a server from the environment, and name runs as
    the pipeline does, not as the user's MLFLOW_RUN_NAME would."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_NAME", raising=False)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """`make_settings("train.epochs=1", ...)`: settings writing under tmp_path, tiny unless `base` says."""

    def make(*overrides: str, base: Sequence[str] = TINY) -> Settings:
        return load_settings(compose([*base, *tmp_overrides(tmp_path), *overrides]))

    return make


@pytest.fixture(scope="session")
def packaged_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny autoencoder packaged as `evaluate` packages a detector (an MLflow model folder)."""
    import keras

    from pipeline.detection.detector import Detector
    from pipeline.models import build_model
    from pipeline.stages import packaging

    keras.utils.set_random_seed(0)
    model = build_model("cae", (32, 32, 1), {"width": 8, "depth": 2, "latent_dim": 16})
    folder = tmp_path_factory.mktemp("models") / "detector"
    detector = Detector(model, 0.05, preprocess_config(32), score_config(), {"run_id": "test-run"})
    packaging.save(detector, folder)
    return folder


def write_scans(folder: Path) -> dict[str, Path]:
    """A small folder of scans as users bring them: 8-bit PNG, RGB JPEG, a DICOM slice in HU, in
    subfolders, plus a text file and a truncated JPEG that cannot be read."""
    import numpy as np
    from PIL import Image

    from pipeline.data.dicom import write_ct_slice
    from tests.volume_factory import head_volume

    rng = np.random.default_rng(1)
    (folder / "a" / "b").mkdir(parents=True)
    files = {
        "png": folder / "slice.png",
        "jpeg": folder / "a" / "colour.jpg",
        "dicom": folder / "a" / "b" / "ct.dcm",
        "text": folder / "notes.txt",
        "truncated": folder / "a" / "cut.jpg",
    }
    Image.fromarray(rng.integers(0, 255, (48, 64), dtype=np.uint8)).save(files["png"])
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(files["jpeg"])
    write_ct_slice(files["dicom"], head_volume(50, 1, seed=1)[..., 0])  # a slice with a head: scored
    files["text"].write_text("not an image")
    files["truncated"].write_bytes(files["jpeg"].read_bytes()[:200])
    return files


@contextlib.contextmanager
def served(model: str, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """`mlflow models serve` of `model` (a folder or a models:/ URI) on a loopback port, in this
    environment plus `env`, until the block ends (stopped with its process group): its URL."""
    port = free_port()
    env = {
        **os.environ,
        **(env or {}),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    mlflow = str(Path(sys.executable).parent / "mlflow")
    process = subprocess.Popen(
        [mlflow, "models", "serve", "-m", model, "--env-manager", "local", "--host", "127.0.0.1"]
        + ["-p", str(port), "-w", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(f"{url}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        else:
            raise AssertionError(f"server did not start: {process.stdout.read().decode()[-3000:]}")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
