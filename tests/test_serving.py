"""The packaged detector as an MLflow model: the pyfunc round trip scores like the Detector, the
registry alias follows what publish points it at, the served code is what inference imports, and
`mlflow models serve` answers HTTP requests."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.exceptions import MlflowException

from pipeline import serving
from pipeline.config import MlflowConfig
from pipeline.data.images import load_image
from pipeline.errors import PipelineError
from tests.conftest import write_scans


@pytest.fixture
def scans(tmp_path: Path) -> dict[str, Path]:
    return write_scans(tmp_path / "scans")


def _direct_scores(packaged_detector: Path, files: list[Path]) -> np.ndarray:
    detector = serving.load_detector(str(packaged_detector))
    batch = np.stack([load_image(f, detector.preprocess) for f in files])[..., None]
    return detector.score(batch)


def test_pyfunc_round_trip_equals_direct_scoring(packaged_detector: Path, scans: dict[str, Path]) -> None:
    files = [scans["png"], scans["jpeg"], scans["dicom"]]
    model = mlflow.pyfunc.load_model(str(packaged_detector))
    result = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    assert list(result.columns) == ["score", "is_anomaly"]
    np.testing.assert_allclose(result["score"], _direct_scores(packaged_detector, files), rtol=1e-5)
    assert (result["is_anomaly"] == (result["score"] > 0.05)).all()


def test_pyfunc_names_the_row_that_is_not_an_image(packaged_detector: Path, scans: dict[str, Path]) -> None:
    model = mlflow.pyfunc.load_model(str(packaged_detector))
    with pytest.raises(MlflowException, match="row 1: not an image"):
        model.predict(pd.DataFrame({"image": [scans["png"].read_bytes(), b"hello"]}))


def _registry(tmp_path: Path) -> MlflowConfig:
    config = MlflowConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_root=tmp_path / "art",
        experiment="e",
        data_experiment="d",
        registered_model="detector",
        model_alias="current",
        register_detector=True,
    )
    mlflow.set_tracking_uri(config.tracking_uri)
    return config


def test_package_registers_each_detector_and_publish_moves_the_alias(
    packaged_detector: Path, scans: dict[str, Path], tmp_path: Path
) -> None:
    config = _registry(tmp_path)
    example = scans["png"].read_bytes()
    logged = []
    for _ in range(2):
        with mlflow.start_run() as run:
            logged.append((serving.log_and_register(packaged_detector, example, config), run.info.run_id))
    assert [version for version, _ in logged] == [1, 2]
    client = mlflow.MlflowClient()
    assert not client.get_registered_model("detector").aliases  # registering moves no alias
    assert serving.point_alias(config, *logged[0]) == 1  # back to the first: what a cached package restores
    assert int(client.get_model_version_by_alias("detector", "current").version) == 1
    assert serving.point_alias(config, *logged[1]) == 2
    loaded = mlflow.pyfunc.load_model("models:/detector@current")
    scores = loaded.predict(pd.DataFrame({"image": [example]}))["score"]
    np.testing.assert_allclose(scores, _direct_scores(packaged_detector, [scans["png"]]), rtol=1e-5)


def test_publish_registers_again_where_the_registry_lacks_the_version(
    packaged_detector: Path, scans: dict[str, Path], tmp_path: Path
) -> None:
    """A version recorded by a cached `package` that the registry does not hold (deleted, or another
    store's) is registered again from the run that logged it; a run the store lacks is a clear error."""
    config = _registry(tmp_path)
    with mlflow.start_run() as run:
        serving.log_and_register(packaged_detector, scans["png"].read_bytes(), config)
    mlflow.MlflowClient().delete_model_version("detector", "1")
    assert serving.point_alias(config, 1, run.info.run_id) == 2
    assert mlflow.MlflowClient().get_model_version_by_alias("detector", "current").run_id == run.info.run_id
    with pytest.raises(PipelineError, match="dvc repro --force package"):
        serving.point_alias(config, 7, "0" * 32)


def test_served_code_and_requirements_are_what_inference_imports(packaged_detector: Path) -> None:
    """The packaged model ships the inference modules only and pins what they import: no Hydra."""
    shipped = {
        p.relative_to(packaged_detector / "code").as_posix()
        for p in (packaged_detector / "code").rglob("*.py")
    }
    assert "pipeline/serving_model.py" in shipped and "pipeline/models/unet.py" in shipped
    assert not shipped & {"pipeline/entrypoint.py", "pipeline/train.py", "pipeline/evaluate.py"}
    requirements = (packaged_detector / "requirements.txt").read_text()
    assert "tensorflow==" in requirements and "pydicom==" in requirements
    assert "hydra" not in requirements and "omegaconf" not in requirements


def test_served_model_loads_and_scores_without_hydra(packaged_detector: Path, scans: dict[str, Path]) -> None:
    """A process in which hydra and omegaconf cannot be imported scores through the packaged model."""
    script = (
        "import sys; sys.modules['hydra'] = sys.modules['omegaconf'] = None\n"
        "import mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model({str(packaged_detector)!r})\n"
        f"print(model.predict(pd.DataFrame({{'image': [open({str(scans['png'])!r}, 'rb').read()]}}))"
        "['score'].iloc[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=packaged_detector.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(
        float(done.stdout.split()[-1]), _direct_scores(packaged_detector, [scans["png"]]), rtol=1e-5
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(packaged_detector: Path) -> Iterator[str]:
    """`mlflow models serve` on a loopback port, in this environment, stopped with its process group."""
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            str(packaged_detector),
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
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


def _payload(*images: bytes) -> dict:
    return {
        "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b).decode()] for b in images]}
    }


@pytest.mark.slow
def test_the_served_model_scores_like_the_pipeline(
    server: str, packaged_detector: Path, scans: dict[str, Path]
) -> None:
    files = [scans["png"], scans["dicom"]]
    answer = requests.post(
        f"{server}/invocations", json=_payload(*(f.read_bytes() for f in files)), timeout=60
    )
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    np.testing.assert_allclose(
        [p["score"] for p in predictions], _direct_scores(packaged_detector, files), rtol=1e-5
    )
    assert [p["is_anomaly"] for p in predictions] == [p["score"] > 0.05 for p in predictions]

    not_an_image = requests.post(f"{server}/invocations", json=_payload(b"hello"), timeout=60)
    assert not_an_image.status_code == 400 and "row 0: not an image" in not_an_image.json()["message"]
    no_column = requests.post(
        f"{server}/invocations",
        timeout=60,
        json={"dataframe_split": {"columns": ["picture"], "data": [["aGk="]]}},
    )
    assert no_column.status_code == 400 and "image" in no_column.json()["message"]
    not_json = requests.post(
        f"{server}/invocations", data="{", timeout=60, headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
