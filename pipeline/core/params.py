"""The project's root and its `params.yaml`, read without Hydra.

`params.yaml` is the composed config of the last `dvc repro` / `dvc exp run`; the commands that run
outside the pipeline (predict, compare, the served model's default) read one section of it here, so
inference needs neither hydra-core nor omegaconf.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = ROOT / "params.yaml"

SectionT = TypeVar("SectionT", bound=BaseModel)


def params_section(name: str, section: type[SectionT], path: Path = PARAMS_FILE) -> SectionT:
    """One validated section of params.yaml: what the last `dvc repro` / `dvc exp run` used."""
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(
            f"{path}: cannot read the composed config ({err}); regenerate it with `make params`"
        ) from None
    try:
        return section.model_validate(params.get(name))
    except ValidationError as err:
        raise ConfigError(f"{path}: invalid '{name}' section: {err}") from None
