"""A split as the stages use it: its manifest rows, labels, and decoded (cached) image batch; and the
settings as the prepared data allows them (`for_data`)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Settings
from pipeline.data.classes import TUMOR
from pipeline.data.dicom import DICOM_FORMAT
from pipeline.data.images import load_cached
from pipeline.data.manifest import frame_levels, read_manifest
from pipeline.data.neighbours import frame_keys, stack_neighbours
from pipeline.data.splitting import SPLITS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    name: str
    frame: pd.DataFrame  # manifest rows: path (relative to the raw folder), class, sha256, ...
    images: np.ndarray  # (n, size, size, preprocess.channels) float32 in [0, 1]

    @property
    def labels(self) -> np.ndarray:
        """1 for tumor (the anomaly), 0 for healthy."""
        return (self.frame["class"] == TUMOR).to_numpy(dtype=np.int64)

    @property
    def levels(self) -> np.ndarray:
        """Each slice's place in its scan, 0 lowest .. 1 highest; NaN for a lone image."""
        return frame_levels(self.frame)

    @property
    def patients(self) -> np.ndarray:
        """Each slice's patient, or its own path where it has none: who may not judge whom."""
        patient = (
            self.frame["patient"]
            if "patient" in self.frame.columns
            else pd.Series("", index=self.frame.index)
        )
        patient = patient.fillna("").astype(str)
        return np.where(patient != "", "patient:" + patient, "path:" + self.frame["path"].astype(str)).astype(
            str
        )


def split_file(settings: Settings, name: str) -> Path:
    return settings.paths.splits / f"{name}.csv"


def read_splits(settings: Settings) -> pd.DataFrame:
    """The manifest rows of every split, with a `split` column."""
    return pd.concat([read_manifest(split_file(settings, name)).assign(split=name) for name in SPLITS])


def load_split(settings: Settings, name: str, only_class: str | None = None) -> Split:
    """Read a split's manifest and its images, decoded once and then served from the cache. With
    `preprocess.neighbours`, each slice's neighbours are stacked from the whole split before `only_class`
    keeps some rows: a healthy slice next to a lesion sees that slice, as it would in a scan."""
    frame = read_manifest(split_file(settings, name))
    neighbours = settings.preprocess.neighbours
    if only_class is not None and not neighbours:
        frame = frame[frame["class"] == only_class].reset_index(drop=True)
    images = load_cached(
        [settings.paths.raw / p for p in frame["path"]],
        frame["sha256"].tolist(),
        settings.preprocess,
        settings.paths.cache,
        progress=settings.train.progress,
    )
    if neighbours:
        images = stack_neighbours(images, *frame_keys(frame), neighbours)
        if only_class is not None:
            keep = (frame["class"] == only_class).to_numpy()
            frame, images = frame[keep].reset_index(drop=True), images[keep]
    return Split(name, frame, images)


def for_data(settings: Settings) -> Settings:
    """`settings` as the prepared data allows, so that one config serves scans and 2D images alike:
    `preprocess.extra_windows` read Hounsfield units, which only DICOM slices carry
    (`DICOM_FORMAT`), so where the manifest holds any other file (a PNG or JPEG, one window already
    applied) they are dropped and the detector reads one channel, the brain window; `train.bleeds`
    have their contrast in Hounsfield units, which an exported image's unknown window cannot show, so
    they go too; and `preprocess.neighbours` read the slices above and below, so without any slice of a
    scan they are dropped. What every stage that builds or reads the detector's input runs with (and
    logs to MLflow)."""
    preprocess, bleeds = settings.preprocess, settings.train.bleeds
    hounsfield_only = tuple(
        name
        for name, configured in (
            ("preprocess.extra_windows", preprocess.extra_windows),
            ("train.bleeds", bleeds.probability),
        )
        if configured
    )
    if not hounsfield_only and not preprocess.neighbours:
        return settings
    manifest = settings.paths.manifests / "raw.csv"
    stat = manifest.stat()  # a manifest written again (a new download) is read again
    facts = _data_facts(
        manifest, stat.st_mtime_ns, stat.st_size, hounsfield_only, bool(preprocess.neighbours)
    )
    update: dict[str, object] = {}
    if preprocess.extra_windows and not facts.hounsfield:
        update["extra_windows"] = ()
    if preprocess.neighbours and not facts.scans:
        update["neighbours"] = 0
    train = settings.train
    if bleeds.probability and not facts.hounsfield:
        train = train.model_copy(update={"bleeds": bleeds.model_copy(update={"probability": 0.0})})
    if not update and train is settings.train:
        return settings
    return settings.model_copy(update={"preprocess": preprocess.model_copy(update=update), "train": train})


@dataclass(frozen=True)
class DataFacts:
    """What the prepared data holds that decides the detector's input channels and training (`for_data`)."""

    hounsfield: bool  # every file is in Hounsfield units
    scans: bool  # some slice has a place in a scan of several slices


# what each setting that needs Hounsfield units becomes on data without them
WITHOUT_HOUNSFIELD = {
    "preprocess.extra_windows": "the detector reads one channel",
    "train.bleeds": "training draws no synthetic bleeds",
}


@functools.cache
def _data_facts(
    manifest: Path, mtime_ns: int, size: int, hounsfield_only: tuple[str, ...], neighbours: bool
) -> DataFacts:
    """`manifest`'s `DataFacts`; read, and a log line written for each configured input the data
    drops (`hounsfield_only`: the settings that need Hounsfield units; `neighbours`), once per version
    of the file."""
    frame = read_manifest(manifest)
    formats = frame["format"]
    others = formats[formats != DICOM_FORMAT].value_counts()
    scans = bool(np.isfinite(frame_levels(frame)).any())
    if hounsfield_only and not others.empty:
        log.info(
            "the prepared data holds %s slices%s, windowed already: %s; %s apply to Hounsfield inputs "
            "(DICOM, NIfTI)",
            " and ".join(f"{count} {name}" for name, count in others.items()),
            f" (of {len(formats)})" if len(formats) > others.sum() else "",
            " and ".join(WITHOUT_HOUNSFIELD[name] for name in hounsfield_only),
            " and ".join(hounsfield_only),
        )
    if neighbours and not scans:
        log.info(
            "the prepared data holds no slice of a scan: preprocess.neighbours, the slices above and "
            "below, apply to scans (NIfTI volumes, DICOM series); the detector reads each slice alone"
        )
    return DataFacts(hounsfield=others.empty, scans=scans)
