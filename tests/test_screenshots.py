"""docs/screenshots.py against the installed MLflow and the system's Chromium: its tracking server asks
for credentials, and the runs table it photographs is found (MLflow's UI changes between versions)."""

from __future__ import annotations

import base64
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from docs import screenshots

pytest.importorskip("playwright", reason="the `docs` extra is not installed")
pytest.importorskip("flask_wtf", reason="the `docs` extra is not installed")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not screenshots.CHROMIUM.exists(), reason=f"no Chromium at {screenshots.CHROMIUM}"),
]
RUN_NAMES = (
    "cae-w4 · synthetic · 2026-12-07 14:02 · job 0",
    "unet-w4 · synthetic · 2026-12-07 14:02 · job 1",
)


def status(url: str, password: str | None) -> int:
    """The HTTP status of listing the experiments, as the admin with `password` or anonymously."""
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
    if password is not None:
        token = base64.b64encode(f"{screenshots.ADMIN}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_runs_table_is_photographed_behind_credentials(tmp_path: Path) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("runs", artifact_location=str(tmp_path / "artifacts"))
    for name in RUN_NAMES:
        client.set_terminated(client.create_run(experiment_id, run_name=name).info.run_id)
    password = secrets.token_urlsafe(24)
    image = tmp_path / "runs.png"
    with screenshots.served(tmp_path, tracking_uri, password) as url:
        assert status(url, None) == 401
        assert status(url, "wrong") == 401
        assert status(url, password) == 200
        screenshots.photograph_runs(url, experiment_id, password, len(RUN_NAMES), image)
    with Image.open(image) as picture:
        width, height = picture.size
    assert width > 600 and 40 < height < 200  # the header and two rows, not the page
