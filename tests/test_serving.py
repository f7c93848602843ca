"""The packaged detector as an MLflow model: the pyfunc round trip scores like the Detector, the
registry alias follows what publish points it at, the served code is what inference imports (nothing
that packages it), the input example is a drawn head the model scores, the anomaly map and mask come on
request (params {"maps": true}), and `mlflow models serve` answers HTTP requests."""

from __future__ import annotations

import base64
import dataclasses
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode
from PIL import Image

from pipeline.core.config import DicomWindow, MlflowConfig
from pipeline.core.errors import PipelineError
from pipeline.core.params import ROOT
from pipeline.data.dicom import is_dicom
from pipeline.data.images import load_channels, load_image, to_slice
from pipeline.detection.detector import Detector
from pipeline.detection.maps import map_png, read_map_png
from pipeline.detection.normalization import ReferenceNormalizer, SliceFacts
from pipeline.serving import model as serving
from pipeline.stages import packaging
from tests.conftest import preprocess_config, served, write_scans


@pytest.fixture
def scans(tmp_path: Path) -> dict[str, Path]:
    return write_scans(tmp_path / "scans")


def _direct_scores(packaged_detector: Path, files: list[Path]) -> np.ndarray:
    detector = packaging.load_detector(str(packaged_detector))
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


def test_a_level_column_judges_each_row_against_healthy_slices_of_its_level(
    packaged_detector: Path, scans: dict[str, Path], tmp_path: Path
) -> None:
    detector = packaging.load_detector(str(packaged_detector))
    levels = np.linspace(0, 1, 40)
    reference = SliceFacts(np.full(40, 0.5), np.full((40, 4), 0.5), levels)
    detector.normalizer = ReferenceNormalizer.fit(reference, 3.0 - 2.0 * levels)  # the skull base scores high
    folder = tmp_path / "detector"
    packaging.save(detector, folder)
    model = mlflow.pyfunc.load_model(str(folder))
    image = scans["png"].read_bytes()
    result = model.predict(pd.DataFrame({"image": [image] * 3, "level": [0.0, 1.0, np.nan]}))
    batch = np.stack([load_image(scans["png"], detector.preprocess)] * 3)[..., None]
    expected = detector.score(batch, np.array([0.0, 1.0, np.nan]))
    np.testing.assert_allclose(result["score"], expected, rtol=1e-5)
    assert result["score"][1] > result["score"][0] + 1  # the same slice is more unusual high in the head
    lone = model.predict(pd.DataFrame({"image": [image]}))["score"]
    np.testing.assert_allclose(lone, result["score"][2:], rtol=1e-5)
    with pytest.raises(MlflowException, match="row 1: 'level' is the slice's place in its scan"):
        model.predict(pd.DataFrame({"image": [image] * 2, "level": [0.5, 1.5]}))


@pytest.fixture(scope="module")
def mapping_model(packaged_detector: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The test detector with a pixel threshold (the median of an image's positive residuals, so its
    mask splits), packaged as `package` does: (the MLflow model folder, the pixel threshold)."""
    detector = Detector.load(packaged_detector / "artifacts" / serving.ARTIFACT)
    example = _odd_image(tmp_path_factory.mktemp("odd"))
    batch = detector.decode([example], ["odd"])
    residuals = detector.residual_maps(batch.images, detector.reconstruct(batch.images))
    anomaly_map = to_slice(residuals[0], batch.geometries[0])
    mapping = dataclasses.replace(detector, pixel_threshold=float(np.median(anomaly_map[anomaly_map > 0])))
    folder = tmp_path_factory.mktemp("mapping") / "detector"
    packaging.save(mapping, folder)
    return folder, mapping.pixel_threshold


def _odd_image(folder: Path) -> Path:
    """A non-square 8-bit PNG, 70 wide and 50 high."""
    path = folder / "odd.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 70), dtype=np.uint8)).save(path)
    return path


def test_maps_on_request_are_predicts_maps_on_the_inputs_grid(
    mapping_model: tuple[Path, float], scans: dict[str, Path], tmp_path: Path
) -> None:
    """params {"maps": true} adds each row's map and mask PNGs: the image's own size, the map
    `predict --maps` writes for that file (its steps, `pipeline.inputs.kinds._score_files`, here), the mask
    the map over the pixel threshold."""
    folder, pixel_threshold = mapping_model
    files = [_odd_image(tmp_path), scans["dicom"]]
    model = mlflow.pyfunc.load_model(str(folder))
    frame = pd.DataFrame({"image": [f.read_bytes() for f in files]})
    plain = model.predict(frame)
    assert list(plain.columns) == ["score", "is_anomaly"]  # without the parameter: as before
    assert list(model.predict(frame, params={"maps": False}).columns) == ["score", "is_anomaly"]
    result = model.predict(frame, params={"maps": True})
    assert list(result.columns) == ["score", "is_anomaly", "map", "mask"]
    pd.testing.assert_frame_equal(result[["score", "is_anomaly"]], plain)

    detector = packaging.load_detector(str(folder))
    batch = detector.decode(files, [f.name for f in files])
    reconstructions, _ = detector.reconstruct_and_score(batch.images)
    residuals = detector.residual_maps(batch.images, reconstructions)
    sizes = [(70, 50), (50, 50)]
    for row, (size, served_map, served_mask) in enumerate(
        zip(sizes, result["map"], result["mask"], strict=True)
    ):
        with (
            Image.open(io.BytesIO(served_map)) as map_image,
            Image.open(io.BytesIO(served_mask)) as mask_image,
        ):
            assert map_image.size == mask_image.size == size
            assert map_image.mode == "I;16" and mask_image.mode == "L"
            mask = np.asarray(mask_image)
        anomaly_map = read_map_png(served_map)
        expected = read_map_png(map_png(to_slice(residuals[row], batch.geometries[row])))
        np.testing.assert_allclose(anomaly_map, expected, atol=1.5 / 65535)
        assert set(np.unique(mask)) <= {0, 255}
        clear = np.abs(anomaly_map - pixel_threshold) > 2 / 65535  # away from the 16-bit rounding
        np.testing.assert_array_equal((mask == 255)[clear], (anomaly_map > pixel_threshold)[clear])
    odd_mask = np.asarray(Image.open(io.BytesIO(result["mask"][0]))) == 255
    assert 0 < odd_mask.sum() < odd_mask.size  # a real split


def test_maps_from_a_detector_without_a_pixel_threshold_are_a_client_error(
    packaged_detector: Path, scans: dict[str, Path]
) -> None:
    model = mlflow.pyfunc.load_model(str(packaged_detector))  # packaged without a pixel threshold
    frame = pd.DataFrame({"image": [scans["png"].read_bytes()]})
    with pytest.raises(MlflowException, match="maps.*need a detector with a pixel threshold") as raised:
        model.predict(frame, params={"maps": True})
    assert raised.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)
    assert list(model.predict(frame).columns) == ["score", "is_anomaly"]


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
            logged.append((packaging.log_and_register(packaged_detector, config), run.info.run_id))
    assert [version for version, _ in logged] == [1, 2]
    client = mlflow.MlflowClient()
    assert not client.get_registered_model("detector").aliases  # registering moves no alias
    assert packaging.point_alias(config, *logged[0]) == 1  # back to the first: what a cached package restores
    assert int(client.get_model_version_by_alias("detector", "current").version) == 1
    assert packaging.point_alias(config, *logged[1]) == 2
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
        packaging.log_and_register(packaged_detector, config)
    mlflow.MlflowClient().delete_model_version("detector", "1")
    assert packaging.point_alias(config, 1, run.info.run_id) == 2
    assert mlflow.MlflowClient().get_model_version_by_alias("detector", "current").run_id == run.info.run_id
    with pytest.raises(PipelineError, match="dvc repro --force package"):
        packaging.point_alias(config, 7, "0" * 32)


def test_served_code_and_requirements_are_what_inference_imports(packaged_detector: Path) -> None:
    """The packaged model ships the inference modules only and pins what they import: no Hydra."""
    shipped = {
        p.relative_to(packaged_detector / "code").as_posix()
        for p in (packaged_detector / "code").rglob("*.py")
    }
    assert "pipeline/serving/entry.py" in shipped and "pipeline/models/unet.py" in shipped
    assert not shipped & {
        "pipeline/stages/entrypoint.py",
        "pipeline/stages/train.py",
        "pipeline/stages/evaluate.py",
        "pipeline/stages/packaging.py",
        "pipeline/core/codebase.py",
        "pipeline/stages/tracking.py",
        "pipeline/data/synthetic.py",
    }
    requirements = (packaged_detector / "requirements.txt").read_text()
    assert "tensorflow==" in requirements and "pydicom==" in requirements
    assert "hydra" not in requirements and "omegaconf" not in requirements


def test_the_served_code_imports_nothing_that_packages_it() -> None:
    """Importing the served model's entry module, as MLflow does, imports no module that builds, logs
    or registers it (`pipeline.stages.packaging`, the stages, `codebase`, `tracking`) and no phantom
    generator."""
    script = (
        f"import sys, {packaging.ENTRY_MODULE}\n"
        "print(' '.join(name for name in sys.modules if name.startswith('pipeline')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported = set(done.stdout.split())
    assert {"pipeline.serving.model", "pipeline.detection.detector"} <= imported
    packaging_modules = {
        "pipeline.stages.packaging",
        "pipeline.stages.package",
        "pipeline.stages.publish",
        "pipeline.core.codebase",
        "pipeline.stages.tracking",
        "pipeline.data.synthetic",
        "pipeline.data.series",
    }
    assert not imported & packaging_modules, sorted(imported & packaging_modules)


@pytest.mark.parametrize("extra_windows", [(), (DicomWindow(level=75, width=215),)])
def test_the_input_example_is_a_small_drawn_head_its_detector_reads(
    extra_windows: tuple[DicomWindow, ...],
) -> None:
    """One window: a PNG (an 8-bit image holds one); more: a DICOM slice in Hounsfield units. Either
    decodes to the detector's channels with a head found in it, and stays a few kilobytes."""
    config = preprocess_config(32, head=True).model_copy(update={"extra_windows": extra_windows})
    example = packaging.input_example(config)
    assert is_dicom(example) == bool(extra_windows) and len(example) < 16_000
    assert load_channels(example, config).shape == (32, 32, config.scored_channels)


def test_the_packaged_input_example_is_scored(packaged_detector: Path) -> None:
    example = Model.load(str(packaged_detector)).load_input_example(str(packaged_detector))
    result = mlflow.pyfunc.load_model(str(packaged_detector)).predict(example)
    assert len(result) == 1 and np.isfinite(result["score"]).all()


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


@pytest.fixture
def server(mapping_model: tuple[Path, float]) -> Iterator[str]:
    """`mlflow models serve` of the test detector with a pixel threshold."""
    with served(str(mapping_model[0])) as url:
        yield url


def _payload(*images: bytes, **params: object) -> dict:
    return {
        "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b).decode()] for b in images]},
        **({"params": params} if params else {}),
    }


@pytest.mark.slow
def test_the_served_model_scores_like_the_pipeline(
    server: str,
    packaged_detector: Path,
    mapping_model: tuple[Path, float],
    scans: dict[str, Path],
    tmp_path: Path,
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
    assert all(set(p) == {"score", "is_anomaly"} for p in predictions)

    # params {"maps": true}: each row's map and mask, PNG files as base64 strings
    odd = _odd_image(tmp_path)
    with_maps = requests.post(f"{server}/invocations", json=_payload(odd.read_bytes(), maps=True), timeout=60)
    assert with_maps.status_code == 200, with_maps.text
    (row,) = with_maps.json()["predictions"]
    in_process = mlflow.pyfunc.load_model(str(mapping_model[0])).predict(
        pd.DataFrame({"image": [odd.read_bytes()]}), params={"maps": True}
    )
    np.testing.assert_allclose(row["score"], in_process["score"][0], rtol=1e-5)
    anomaly_map = read_map_png(base64.b64decode(row["map"]))
    assert anomaly_map.shape == (50, 70)
    np.testing.assert_allclose(anomaly_map, read_map_png(in_process["map"][0]), atol=1.5 / 65535)
    with Image.open(io.BytesIO(base64.b64decode(row["mask"]))) as mask:
        assert mask.size == (70, 50) and mask.mode == "L"
    not_a_boolean = requests.post(
        f"{server}/invocations", json=_payload(odd.read_bytes(), maps="yes"), timeout=60
    )
    assert not_a_boolean.status_code == 400 and "maps" in not_a_boolean.json()["message"]

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
