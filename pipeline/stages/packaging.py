"""The packaged detector: the MLflow model folder that `pipeline.serving.model` runs from, logged to a run,
registered, and named by the registry alias; and a detector read back from such a folder or URI.

The folder carries the Keras model, the threshold, the preprocessing config and a copy of the modules
inference imports (`pipeline.core.codebase`; MLflow loads the model "from code", `ENTRY_MODULE`, with them on
its path), pinned to the distributions those import, so a fresh process scores exactly as the pipeline
did. Nothing here is shipped: the served model never imports this module.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

from pipeline.core import codebase
from pipeline.core.config import MlflowConfig, Paths, PreprocessConfig
from pipeline.core.errors import PipelineError
from pipeline.core.params import ROOT, params_section
from pipeline.data.dicom import apply_window, write_ct_slice
from pipeline.detection.detector import Detector
from pipeline.serving.model import ARTIFACT, INPUT_COLUMN, LEVEL_COLUMN, MAPS, DetectorModel
from pipeline.stages import tracking

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
ENTRY_MODULE = "pipeline.serving.entry"  # what MLflow loads; inference imports what it imports
EXAMPLE_SIZE = 64  # the input example's pixels a side: every model folder carries it


def input_example(preprocess: PreprocessConfig) -> bytes:
    """The model's input example, a drawn head (no patient's scan ships with the model): a DICOM slice
    in Hounsfield units for a detector that reads several windows (`preprocess.extra_windows`, which an
    8-bit image cannot give), else a PNG seen through its brain window."""
    hounsfield = _drawn_head(EXAMPLE_SIZE)
    if preprocess.extra_windows:
        return write_ct_slice(io.BytesIO(), hounsfield, series="input example").getvalue()
    window = preprocess.dicom_window
    gray = np.round(apply_window(hounsfield, window.level, window.width) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def _drawn_head(size: int) -> np.ndarray:
    """An axial head slice in Hounsfield units drawn with ellipses: skull, brain, two ventricles, air."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]

    def inside(half_height: float, half_width: float, across: float = 0.0) -> np.ndarray:
        return (y / half_height) ** 2 + ((x - across) / half_width) ** 2 <= 1

    hounsfield = np.full((size, size), -1000.0)
    hounsfield[inside(0.9, 0.75)] = 1000.0
    hounsfield[inside(0.82, 0.67)] = 35.0
    for across in (-0.15, 0.15):
        hounsfield[inside(0.3, 0.08, across)] = 5.0
    return hounsfield


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


def _model_spec(detector_dir: Path, code_dir: Path, example: pd.DataFrame) -> dict[str, Any]:
    """What `save_model` and `log_model` both take: one definition of the packaged model."""
    return {
        "python_model": str(code_dir / codebase.module_file(ENTRY_MODULE).relative_to(codebase.SOURCE)),
        "artifacts": {ARTIFACT: str(detector_dir)},
        "code_paths": [str(code_dir)],
        "signature": SIGNATURE,
        "input_example": example,
        "pip_requirements": requirements(),
    }


def save(detector: Detector, path: Path) -> None:
    """Write the detector as an MLflow model folder (`path` empty or absent), with the input example
    its preprocessing reads (`input_example`)."""
    example = pd.DataFrame({INPUT_COLUMN: [input_example(detector.preprocess)]})
    with tempfile.TemporaryDirectory() as tmp:
        detector.save(Path(tmp) / ARTIFACT)
        code = inference_code(Path(tmp) / "code")
        mlflow.pyfunc.save_model(str(path), **_model_spec(Path(tmp) / ARTIFACT, code, example))


def log_and_register(saved: Path, config: MlflowConfig) -> int | None:
    """Log a folder written by `save` into the active run and, if `config.register_detector`, register
    it as a new version of `config.registered_model` (`publish` moves the alias); return the version."""
    name = config.registered_model if config.register_detector else None
    example = Model.load(str(saved)).load_input_example(str(saved))
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
