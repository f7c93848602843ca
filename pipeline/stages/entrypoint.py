"""Hydra glue: how a stage entry point gets its validated `Settings`.

`conf/` is the single source of truth. Run alone, a stage composes `conf/` (plus any Hydra overrides on
its command line); under DVC it reads `params.yaml` (`--config-dir . --config-name params`), the
composition that `dvc exp run -S ...` writes. Either way the config is checked (`pipeline.core.config`, then
the names that pick a component: `pipeline.stages.components`) before any long work starts.
`python -m pipeline.stages.entrypoint [overrides]` rewrites `params.yaml`.

A Hydra app's output folder (`hydra.run.dir`, `hydra.sweep.dir` in conf/config.yaml) ends with
`${run_token:}`, a token of its own process: two runs started in the same second get folders of their own.
An Optuna search's sampler is seeded with `${sampler_seed:...}`: `seed`, but none in a study that workers
share (`hydra.sweeper.storage` set), where one seed would have every worker draw the same trials.
"""

from __future__ import annotations

import functools
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from pydantic import ValidationError

from pipeline.core import lifecycle
from pipeline.core.config import Settings, invalid
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.params import PARAMS_FILE, ROOT

CONF_DIR = ROOT / "conf"
RUN_TOKEN = secrets.token_hex(3)  # random, not the pid: processes in containers often share pids
OmegaConf.register_new_resolver("run_token", lambda: RUN_TOKEN, replace=True)
OmegaConf.register_new_resolver(
    "sampler_seed", lambda seed, storage: seed if storage is None else None, replace=True
)


def load_settings(cfg: DictConfig | dict[str, Any]) -> Settings:
    """Validate a composed config, then the components it names; raise ConfigError naming every
    offending key, or the unknown name and the registered ones."""
    from pipeline.stages.components import check_components  # here: writing params.yaml needs no Keras

    if isinstance(cfg, DictConfig):
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as err:
            key = err.full_key
            raise ConfigError(
                f"config value '{key}' is required: add `{key}=...` to the command "
                f"(with DVC: `dvc exp run -S {key}=...`)"
            ) from None
    try:
        settings = Settings.model_validate(cfg)
    except ValidationError as err:
        raise ConfigError(invalid(err)) from None
    return check_components(settings)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose `conf/` exactly as DVC's Hydra integration does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides or [])
    OmegaConf.resolve(cfg)
    return cfg


def write_params(path: Path = PARAMS_FILE, overrides: list[str] | None = None) -> None:
    """Write `params.yaml` as DVC writes it, so `dvc repro` and `dvc exp run` see the same file."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(path, str(CONF_DIR), None, "config", str(ROOT), overrides or [])


def stage(fn: Callable[[Settings], None]) -> Callable[[], None]:
    """Turn `fn(settings)` into a Hydra entry point that reports user errors without a traceback and
    stops on SIGTERM as on Ctrl-C (`pipeline.core.lifecycle`)."""

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    @functools.wraps(fn)
    def main(cfg: DictConfig) -> None:
        from pipeline.core import hardware  # here, not at the top: writing params.yaml needs no TensorFlow

        try:
            with lifecycle.sigterm_stops():
                settings = load_settings(cfg)
                hardware.configure(settings.runtime.threads)
                fn(settings)
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    return main


if __name__ == "__main__":
    write_params(overrides=sys.argv[1:])
    print(f"wrote {PARAMS_FILE.relative_to(ROOT)}")
