"""A split as the stages use it: its manifest rows, labels, and decoded (cached) image batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Settings
from pipeline.data.classes import TUMOR
from pipeline.data.images import load_cached
from pipeline.data.manifest import frame_levels, read_manifest
from pipeline.data.splitting import SPLITS


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
    """Read a split's manifest and its images, decoded once and then served from the cache."""
    frame = read_manifest(split_file(settings, name))
    if only_class is not None:
        frame = frame[frame["class"] == only_class].reset_index(drop=True)
    images = load_cached(
        [settings.paths.raw / p for p in frame["path"]],
        frame["sha256"].tolist(),
        settings.preprocess,
        settings.paths.cache,
        progress=settings.train.progress,
    )
    return Split(name, frame, images)
