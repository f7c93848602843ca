"""Stage `download`: bring the configured source into data/raw and write its manifest and rejects."""

from __future__ import annotations

import logging

import mlflow

from pipeline import tracking
from pipeline.config import Settings
from pipeline.data import sources
from pipeline.data.classes import CLASSES, HEALTHY, TUMOR
from pipeline.data.manifest import build_manifest, content_hash
from pipeline.entrypoint import stage
from pipeline.errors import DataError
from pipeline.io import atomic_dir, write_csv, write_json

log = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    paths = settings.paths
    with atomic_dir(paths.raw) as raw:
        unusable = sources.fetch(settings.data, raw, settings.seed)
        manifest, rejects = build_manifest(raw, settings.preprocess.dicom_window, unusable)
    write_csv(paths.manifests / "raw.csv", manifest)
    write_csv(paths.manifests / "rejects.csv", rejects)
    counts = manifest["class"].value_counts()
    summary = {
        "data_hash": content_hash(manifest),
        **{cls: int(counts.get(cls, 0)) for cls in CLASSES},
        "rejected": len(rejects),
        "patients": manifest.loc[manifest["patient"] != "", "patient"].nunique(),
        "scans": manifest.loc[manifest["series"] != "", "series"].nunique(),
    }
    write_json(paths.reports / "data" / "download.json", summary)
    log.info(
        "%d healthy, %d tumor images; %d files rejected (%s)",
        summary[HEALTHY],
        summary[TUMOR],
        summary["rejected"],
        paths.manifests / "rejects.csv",
    )

    with tracking.data_run(
        settings,
        "download",
        summary["data_hash"],
        {k: v for k, v in settings.flat_params().items() if k.startswith(("data.", "preprocess.dicom"))},
    ):
        mlflow.log_metrics({k: v for k, v in summary.items() if k != "data_hash"})
        mlflow.log_artifact(str(paths.manifests / "raw.csv"), "manifests")
        mlflow.log_artifact(str(paths.manifests / "rejects.csv"), "manifests")
    for cls in CLASSES:
        if not summary[cls]:
            raise DataError(
                f"no decodable {cls} images in {paths.raw}: see {paths.manifests / 'rejects.csv'}"
            )


main = stage(run)

if __name__ == "__main__":
    main()
