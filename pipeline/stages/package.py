"""Stage `package`: the product. The trained model, the calibrated threshold, the score and the
preprocessing as one MLflow model folder (`models/detector`, what `predict` uses by default), logged
to the model's run and, with `mlflow.register_detector`, registered as a new version of
`mlflow.registered_model`. `publish` points the registry alias at it."""

from __future__ import annotations

import logging

from pipeline.core.config import Settings
from pipeline.core.io import atomic_dir, write_json
from pipeline.data.datasets import for_data
from pipeline.detection.calibration import Calibration, report_file
from pipeline.detection.detector import Detector
from pipeline.stages import packaging, tracking
from pipeline.stages.entrypoint import stage

log = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    settings = for_data(settings)
    detector = Detector.calibrated(
        settings,
        Calibration.load(report_file(settings.paths)),
        {"model": settings.model.name, "threshold_method": settings.threshold.method},
    )
    with tracking.model_run(settings, "package", detector.model) as run_id:
        detector.info["run_id"] = run_id
        with atomic_dir(settings.paths.detector) as saved:
            packaging.save(detector, saved)
            version = packaging.log_and_register(saved, settings.mlflow)
    write_json(
        settings.paths.registration,
        {
            "run_id": run_id,
            "version": version,
            "registered_model": settings.mlflow.registered_model if version else None,
        },
    )
    registered = f", registered as version {version} of {settings.mlflow.registered_model}" if version else ""
    log.info("detector saved to %s and logged to run %s%s", settings.paths.detector, run_id, registered)


main = stage(run)

if __name__ == "__main__":
    main()
