"""Stage `download`: bring the configured source into data/raw and write its manifest and rejects.

The data is fetched and inspected in a temporary folder: `data/raw` and its manifests are replaced only
once the new data holds both classes, so a failed download keeps the last good data. Its MLflow run is
open throughout, so a failure is recorded there (FAILED, with the error and the rejects)."""

from __future__ import annotations

import logging

import mlflow
import pandas as pd

from pipeline.core.config import Settings
from pipeline.core.errors import DataError
from pipeline.core.io import atomic_dir, for_spreadsheets, write_csv, write_json
from pipeline.data import sources
from pipeline.data.classes import CLASSES, HEALTHY, TUMOR
from pipeline.data.guards import Limits
from pipeline.data.manifest import build_manifest, content_hash, portable_names
from pipeline.stages import DATA_INPUTS, params_of, tracking
from pipeline.stages.entrypoint import stage

log = logging.getLogger(__name__)


def _summary(manifest: pd.DataFrame, rejects: pd.DataFrame) -> dict[str, str | int]:
    counts = manifest["class"].value_counts()
    return {
        "data_hash": content_hash(manifest),
        **{cls: int(counts.get(cls, 0)) for cls in CLASSES},
        "rejected": len(rejects),
        "patients": manifest.loc[manifest["patient"] != "", "patient"].nunique(),
        "scans": manifest.loc[manifest["series"] != "", "series"].nunique(),
    }


def _check_classes(summary: dict[str, str | int], rejects: pd.DataFrame, settings: Settings) -> None:
    """Both classes are needed: refuse the new data, naming where its rejects are kept."""
    missing = [cls for cls in CLASSES if not summary[cls]]
    if not missing:
        return
    example = f", e.g. {rejects['path'].iloc[0]}: {rejects['reason'].iloc[0]}" if len(rejects) else ""
    run = mlflow.active_run()
    raise DataError(
        f"no decodable {' or '.join(missing)} images in the data fetched ({len(rejects)} files "
        f"rejected{example}); {settings.paths.raw} and {settings.paths.manifests} are left as they were; "
        f"every reject: MLflow run {run.info.run_id if run else '?'}, manifests/rejects.csv"
    )


def run(settings: Settings) -> None:
    paths = settings.paths
    with tracking.data_run(settings, "download", params_of(settings, DATA_INPUTS["download"])):
        with atomic_dir(paths.raw) as raw:
            limits = Limits.of(settings.preprocess)
            unusable = sources.fetch(settings.data, raw, settings.seed, settings.archive, limits)
            portable_names(raw)
            manifest, rejects = build_manifest(raw, settings.preprocess, unusable)
            summary = _summary(manifest, rejects)
            tracking.name_data_run(str(summary["data_hash"]))
            mlflow.log_metrics({k: v for k, v in summary.items() if k != "data_hash"})
            mlflow.log_text(manifest.to_csv(index=False), "manifests/raw.csv")
            mlflow.log_text(for_spreadsheets(rejects).to_csv(index=False), "manifests/rejects.csv")
            _check_classes(summary, rejects, settings)
            # the manifests replace theirs just before data/raw does, once nothing can fail any more
            write_csv(paths.manifests / "raw.csv", manifest)
            write_csv(paths.manifests / "rejects.csv", rejects, for_people=True)
        write_json(paths.reports / "data" / "download.json", summary)
    log.info(
        "%d healthy, %d tumor images; %d files rejected (%s)",
        summary[HEALTHY],
        summary[TUMOR],
        summary["rejected"],
        paths.manifests / "rejects.csv",
    )


main = stage(run)

if __name__ == "__main__":
    main()
