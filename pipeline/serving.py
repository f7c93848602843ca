"""The detector as an MLflow pyfunc model: what the registry holds and `mlflow models serve` runs.

Input: a DataFrame with one column `image`, the bytes of an image file (PNG, JPEG, DICOM, ...); over
REST each is a base64 string (`{"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}`).
Output: `score` and `is_anomaly` per row. With the inference parameter `maps` true (`predict(df,
params={"maps": True})`; over REST `"params": {"maps": true}` beside `dataframe_split`) each row also
gets `map` and `mask`, its anomaly map and anomaly mask on the input image's own pixel grid as PNG
files' bytes (`pipeline.maps`: 16-bit, residual * 65535; 8-bit, 255 = anomalous), which the scoring
server's JSON gives as base64 strings (MIME style, a line break every 76 characters); a detector
packaged without a pixel threshold answers a maps request with a client error. The model folder
carries the Keras model, the threshold, the preprocessing config and a copy of the modules inference
imports (`pipeline.codebase`), pinned to the distributions those import, so a fresh process scores
exactly as the pipeline did.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from pipeline import codebase, tracking
from pipeline import maps as maps_io
from pipeline.config import MlflowConfig, Paths
from pipeline.data.images import Geometry, to_slice
from pipeline.detector import Detector
from pipeline.errors import PipelineError
from pipeline.params import ROOT, params_section

ARTIFACT = "detector"  # the Detector folder inside the MLflow model, and the model's name in a run
INPUT_COLUMN = "image"
LEVEL_COLUMN = "level"  # optional: the slice's place in its scan, 0 lowest .. 1 highest (empty: a lone slice)
MAPS = "maps"  # the inference parameter that asks for each row's anomaly map and mask
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", INPUT_COLUMN), ColSpec("double", LEVEL_COLUMN, required=False)]),
    outputs=Schema(
        [
            ColSpec("double", "score"),
            ColSpec("boolean", "is_anomaly"),
            ColSpec("binary", "map", required=False),  # only with params {"maps": true}: PNG bytes
            ColSpec("binary", "mask", required=False),
        ]
    ),
    params=ParamSchema([ParamSpec(MAPS, "boolean", False)]),
)
ENTRY_MODULE = "pipeline.serving_model"  # what MLflow loads; inference imports what it imports


class DetectorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.detector = Detector.load(Path(context.artifacts[ARTIFACT]))

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Score every row; a row that is not a decodable image fails the request with a client
        error naming the row and the reason (HTTP 400 from the scoring server). `params["maps"]`
        adds each row's anomaly map and mask as PNG bytes (columns `map` and `mask`)."""
        maps = (params or {}).get(MAPS) or False
        if not isinstance(maps, bool):
            raise MlflowException(
                f"the parameter '{MAPS}' must be a boolean, got {maps!r}", INVALID_PARAMETER_VALUE
            )
        if maps:
            try:
                maps_io.check_detector(self.detector)
            except PipelineError as err:
                raise MlflowException(f"parameter '{MAPS}': {err}", INVALID_PARAMETER_VALUE) from None
        if INPUT_COLUMN not in model_input.columns:
            raise MlflowException(
                f"the input needs a column '{INPUT_COLUMN}' with the bytes of an image file "
                f"(got columns {list(model_input.columns)})",
                INVALID_PARAMETER_VALUE,
            )
        values = model_input[INPUT_COLUMN].tolist()
        wrong = [i for i, value in enumerate(values) if not isinstance(value, bytes | bytearray)]
        if wrong:
            raise MlflowException(
                f"row {wrong[0]}: '{INPUT_COLUMN}' must be the bytes of an image file "
                f"(base64 in JSON), got {type(values[wrong[0]]).__name__}",
                INVALID_PARAMETER_VALUE,
            )
        batch = self.detector.decode([bytes(v) for v in values], [f"row {i}" for i in range(len(values))])
        if batch.errors:
            raise MlflowException(
                "; ".join(f"row {i}: {reason}" for i, reason in batch.errors.items()), INVALID_PARAMETER_VALUE
            )
        reconstructions, scores = self.detector.reconstruct_and_score(batch.images, _levels(model_input))
        scores = scores.astype("float64")
        result = pd.DataFrame({"score": scores, "is_anomaly": self.detector.is_anomaly(scores)})
        if maps:  # every row decoded (an error fails the request), so row i is input row i
            residuals = self.detector.residual_maps(batch.images, reconstructions)
            pngs = [
                self._map_and_mask(residual, geometry)
                for residual, geometry in zip(residuals, batch.geometries, strict=True)
            ]
            result["map"] = [map_png for map_png, _ in pngs]
            result["mask"] = [mask_png for _, mask_png in pngs]
        return result

    def _map_and_mask(self, residual: np.ndarray, geometry: Geometry) -> tuple[bytes, bytes]:
        """One row's residual map (on the model's grid) -> its map and mask PNGs on its image's grid."""
        anomaly_map = to_slice(residual, geometry)
        return maps_io.map_png(anomaly_map), maps_io.mask_png(self.detector.anomaly_mask(anomaly_map))


def _levels(model_input: pd.DataFrame) -> np.ndarray | None:
    """The rows' places in their scans (`level`), where given; a value outside 0..1 fails the request."""
    if LEVEL_COLUMN not in model_input.columns:
        return None
    levels = pd.to_numeric(model_input[LEVEL_COLUMN], errors="coerce").to_numpy(dtype=float)
    wrong = np.flatnonzero((levels < 0) | (levels > 1))
    if len(wrong):
        raise MlflowException(
            f"row {wrong[0]}: '{LEVEL_COLUMN}' is the slice's place in its scan, 0 (lowest) to 1 (highest), "
            f"got {levels[wrong[0]]}",
            INVALID_PARAMETER_VALUE,
        )
    return levels


def inference_code(target: Path) -> Path:
    """Copy the modules inference imports into `target/pipeline` (the package MLflow ships)."""
    modules, _ = codebase.closure(ENTRY_MODULE)
    for file in codebase.files(modules):
        destination = target / codebase.PACKAGE / file.relative_to(codebase.SOURCE)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, destination)
    return target / codebase.PACKAGE


def requirements() -> list[str]:
    """The distributions inference imports, pinned to the installed versions."""
    _, imported = codebase.closure(ENTRY_MODULE)
    return tracking.pinned(tuple(codebase.distributions(imported)))


def _model_spec(detector_dir: Path, code_dir: Path, example: bytes) -> dict[str, Any]:
    """What `save_model` and `log_model` both take: one definition of the packaged model."""
    return {
        "python_model": str(code_dir / "serving_model.py"),
        "artifacts": {ARTIFACT: str(detector_dir)},
        "code_paths": [str(code_dir)],
        "signature": SIGNATURE,
        "input_example": pd.DataFrame({INPUT_COLUMN: [example]}),
        "pip_requirements": requirements(),
    }


def save(detector: Detector, path: Path, example: bytes) -> None:
    """Write the detector as an MLflow model folder (`path` empty or absent); `example` is the bytes
    of one image file, stored as the model's input example."""
    with tempfile.TemporaryDirectory() as tmp:
        detector.save(Path(tmp) / ARTIFACT)
        code = inference_code(Path(tmp) / "code")
        mlflow.pyfunc.save_model(str(path), **_model_spec(Path(tmp) / ARTIFACT, code, example))


def log_and_register(saved: Path, example: bytes, config: MlflowConfig) -> int | None:
    """Log a folder written by `save` into the active run and, if `config.register_detector`, register
    it as a new version of `config.registered_model` (`publish` moves the alias); return the version."""
    name = config.registered_model if config.register_detector else None
    with tempfile.TemporaryDirectory() as tmp:
        code = inference_code(Path(tmp))
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT,
            registered_model_name=name,
            **_model_spec(saved / "artifacts" / ARTIFACT, code, example),
        )
    return int(info.registered_model_version) if name else None


def point_alias(config: MlflowConfig, version: int, run_id: str) -> int:
    """Point `config.model_alias` at `version` of the registered model, which must be the detector
    logged in run `run_id`; where the registry lacks it (a new tracking store, a deleted version),
    register that run's detector again. Returns the version the alias now names."""
    client = MlflowClient()
    try:
        found = client.get_model_version(config.registered_model, str(version))
        same = found.run_id == run_id
    except MlflowException:
        same = False
    if not same:
        try:
            client.get_run(run_id)
        except MlflowException:
            raise PipelineError(
                f"run {run_id}, which logged the workspace's detector, is not in the tracking "
                f"store {mlflow.get_tracking_uri()}: rebuild it with `dvc repro --force package`"
            ) from None
        version = int(mlflow.register_model(f"runs:/{run_id}/{ARTIFACT}", config.registered_model).version)
    client.set_registered_model_alias(config.registered_model, config.model_alias, str(version))
    return version


def default_model() -> Path:
    """The detector of the last `dvc repro`, where params.yaml puts it."""
    paths = params_section("paths", Paths)
    return paths.detector if paths.detector.is_absolute() else ROOT / paths.detector


def load_detector(model: str) -> Detector:
    """A Detector from a folder written by `save` (or `Detector.save`) or an MLflow model URI."""
    if ":/" not in model:
        folder = Path(model)
        if not folder.exists():
            raise PipelineError(
                f"model '{model}' does not exist (run `dvc repro` to build the default one, or pass --model)"
            )
        if not (folder / "MLmodel").is_file():
            return Detector.load(folder)
    else:
        tracking.setup(params_section("mlflow", MlflowConfig))
    try:
        loaded = mlflow.pyfunc.load_model(model)
    except (MlflowException, OSError, ValueError, yaml.YAMLError) as err:  # ValueError: a corrupt MLmodel
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PipelineError(f"cannot load model '{model}': {reason}") from None
    try:
        python_model = loaded.unwrap_python_model()
    except MlflowException:
        python_model = None
    if not isinstance(python_model, DetectorModel):
        raise PipelineError(
            f"model '{model}' is not a detector (a bare autoencoder has no threshold): use "
            f"the one evaluate packages, e.g. runs:/<run id>/{ARTIFACT} or "
            "models:/<registered name>@<alias>"
        )
    return python_model.detector
