"""The pipeline's stages in the order they run: `dvc.yaml` lists them in this order (a test checks it),
and `python -m pipeline` runs them in it (all but `check`: it validates the config first itself). Each
is a module `pipeline.stages.<stage>` with `run(settings)`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.core.config import Settings

CHECK_STAGE = "check"  # DVC runs it first: an invalid config stops DVC before it deletes any outputs
DATA_STAGES = ("download", "split")  # what a sweep's jobs share
MODEL_STAGES = ("train", "calibrate", "evaluate", "package", "publish")  # what each job runs
STAGES = (CHECK_STAGE, *DATA_STAGES, *MODEL_STAGES)
# What each data stage reads of the config, kept here alone: dvc.yaml's `params` name the same keys (a test
# checks them; a section stands for every key in it), a sweep's jobs share prepared data only where all of
# them agree (`pipeline.__main__`), and the stage logs their values to MLflow.
DATA_INPUTS: dict[str, tuple[str, ...]] = {
    "download": (
        "seed",
        "data",
        "preprocess.dicom_window",
        "preprocess.max_pixels",
        "preprocess.max_voxels",
        "preprocess.head.threshold",
        "archive",
    ),
    "split": ("seed", "split"),
}
# what the prepared data (download, then split) depends on
DATA_KEYS = tuple(dict.fromkeys(key for stage in DATA_STAGES for key in DATA_INPUTS[stage]))


def runner(name: str) -> Callable[[Settings], None]:
    """The `run(settings)` of stage `name`."""
    if name not in STAGES:
        raise ValueError(f"unknown stage '{name}' (stages: {', '.join(STAGES)})")
    return importlib.import_module(f"pipeline.stages.{name}").run


def params_of(settings: Settings, keys: tuple[str, ...]) -> dict[str, str]:
    """The MLflow params (`Settings.flat_params`) under `keys`: a key stands for every key below it."""
    prefixes = tuple(f"{key}." for key in keys)
    return {k: v for k, v in settings.flat_params().items() if k in keys or k.startswith(prefixes)}
