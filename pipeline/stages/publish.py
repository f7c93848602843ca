"""Stage `publish`: point `models:/<registered_model>@<model_alias>` at the detector the workspace holds.

DVC re-runs it every time (`always_changed`): when `dvc exp run` restores `package` from the run
cache, nothing registers anything, and without this step the alias would keep naming whichever
detector was registered last, not the one in `models/detector`. It only moves an alias (re-registering
the run's detector where the registry lacks that version), so it takes a second."""

from __future__ import annotations

import logging

from pipeline.core.config import Settings
from pipeline.core.io import read_json
from pipeline.stages import packaging, tracking
from pipeline.stages.entrypoint import stage

log = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    registered = read_json(settings.paths.registration)
    if not (settings.mlflow.register_detector and registered["version"]):
        log.info("mlflow.register_detector is off: the registry alias is left where it is")
        return
    tracking.setup(settings.mlflow)
    version = packaging.point_alias(settings.mlflow, registered["version"], registered["run_id"])
    log.info(
        "models:/%s@%s -> version %d (run %s)",
        settings.mlflow.registered_model,
        settings.mlflow.model_alias,
        version,
        registered["run_id"],
    )


main = stage(run)

if __name__ == "__main__":
    main()
