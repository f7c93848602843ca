"""What a sweep of `python -m pipeline` sets up once, in the process that launches it, before any job
starts (a Hydra callback, conf/config.yaml): jobs that run at the same time (Ray, workers sharing an
Optuna study) would otherwise each create the same stores and collide.

- the Optuna study's schema, when `hydra.sweeper.storage` is a database URL (`pipeline.team.study`);
- the MLflow store and the pipeline's two experiments: jobs creating a fresh SQLite store at once fail
  in its migrations, and two creating one experiment, on its unique name.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from pipeline.core.config import MlflowConfig
from pipeline.core.errors import ServiceError


class SetUpStores(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # here, not at the top: every Hydra app of conf/ loads this class, and a stage run alone
        # (python -m pipeline.stages.check) needs neither MLflow nor TensorFlow
        from mlflow.exceptions import MlflowException

        from pipeline.stages import tracking
        from pipeline.team import study

        try:
            mlflow_config = MlflowConfig.model_validate(OmegaConf.to_container(config.mlflow, resolve=True))
        except ValidationError:
            return  # each job reports the invalid config itself, in one line and a FAILED run
        storage = OmegaConf.select(config, "hydra.sweeper.storage")
        try:
            if isinstance(storage, str):
                study.set_up(storage)
            tracking.setup(mlflow_config)
            for name in (mlflow_config.data_experiment, mlflow_config.experiment):
                try:
                    tracking.experiment_id(name, mlflow_config)
                except MlflowException:  # another worker created it between the look-up and the creation
                    tracking.experiment_id(name, mlflow_config)
        except ServiceError as err:  # the tracking server is down: one line, before any job starts
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
