"""Stage `split`: split the manifest seeded and leakage-free: by patient where slices have patient ids,
else de-duplicated images."""

from __future__ import annotations

import logging

import mlflow

from pipeline.core.config import Settings
from pipeline.core.io import atomic_dir, write_csv, write_json
from pipeline.data.manifest import content_hash, read_manifest
from pipeline.data.splitting import SPLITS, patient_counts, split, split_counts
from pipeline.stages import DATA_INPUTS, params_of, tracking
from pipeline.stages.entrypoint import stage

log = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    """The splits replace the previous ones only once they are made and logged; a failure is recorded
    in the stage's MLflow run."""
    with tracking.data_run(settings, "split", params_of(settings, DATA_INPUTS["split"])):
        manifest = read_manifest(settings.paths.manifests / "raw.csv")
        tracking.name_data_run(content_hash(manifest))
        result = split(manifest, settings.split, settings.seed)
        summary = {
            **split_counts(result.assigned),
            **patient_counts(result.assigned),
            "excluded": len(result.excluded),
            "by_patient": int(result.by_patient),
        }
        mlflow.log_metrics(summary)
        mlflow.set_tag("split_hash", content_hash(result.assigned, by="split"))
        with atomic_dir(settings.paths.splits) as out:
            for name in SPLITS:
                write_csv(out / f"{name}.csv", result.assigned[result.assigned["split"] == name])
            write_csv(out / "excluded.csv", result.excluded)
            mlflow.log_artifacts(str(out), "splits")
        write_json(settings.paths.reports / "data" / "split.json", summary)
    log.info(
        "split sizes %s; %d images excluded (%s)",
        summary,
        len(result.excluded),
        settings.paths.splits / "excluded.csv",
    )


main = stage(run)

if __name__ == "__main__":
    main()
