"""The pipeline's stages in the order they run: `dvc.yaml` lists them in this order (a test checks it),
and `python -m pipeline` runs them in it (all but `check`: it validates the config first itself). Each
is a module `pipeline.<stage>` with `run(settings)`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import Settings

CHECK_STAGE = "check"  # DVC runs it first: an invalid config stops DVC before it deletes any outputs
DATA_STAGES = ("download", "split")  # what a sweep's jobs share
MODEL_STAGES = ("train", "calibrate", "evaluate", "package", "publish")  # what each job runs
STAGES = (CHECK_STAGE, *DATA_STAGES, *MODEL_STAGES)


def runner(name: str) -> Callable[[Settings], None]:
    """The `run(settings)` of stage `name`."""
    if name not in STAGES:
        raise ValueError(f"unknown stage '{name}' (stages: {', '.join(STAGES)})")
    return importlib.import_module(f"pipeline.{name}").run
