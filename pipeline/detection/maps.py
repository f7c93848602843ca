"""Anomaly maps and masks on the input's own pixel grid, in the formats viewers open.

A 2-D image's map is a 16-bit grayscale PNG (residual * 65535; residuals lie in [0, 1]) and its mask
an 8-bit PNG (255 = anomalous), both the image's size. Volumes get NIfTI files with the scan's affine
(a float32 map, NaN on slices that were not scored, and a uint8 mask of `mask_labels`; a DICOM series a
DICOM-SEG too, `pipeline.data.series`), written by `pipeline.predict`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.core.io import make_folders
from pipeline.detection.detector import Detector

MAP_SCALE = 65535  # a 16-bit map PNG holds residual * MAP_SCALE
# A scan's mask volume: 0 scored and not anomalous, 1 anomalous, NOT_SCORED where a slice could not be
# scored (its map there is NaN): never shown as clean.
ANOMALOUS, NOT_SCORED = 1, 2


def check_detector(detector: Detector) -> None:
    """Masks need the pixel threshold that calibration sets."""
    if math.isnan(detector.pixel_threshold):
        raise PipelineError(
            "anomaly maps need a detector with a pixel threshold; this one was packaged before anomaly "
            "masks existed (run `dvc repro` to calibrate and package it again)"
        )


def map_png(anomaly_map: np.ndarray) -> bytes:
    """A (rows, columns) residual map as a 16-bit grayscale PNG file's bytes."""
    scaled = np.round(np.clip(anomaly_map, 0.0, 1.0) * MAP_SCALE).astype(np.uint16)
    return _png(scaled)


def mask_png(mask: np.ndarray) -> bytes:
    """A (rows, columns) boolean mask as an 8-bit PNG file's bytes (255 = anomalous)."""
    return _png(np.where(mask, 255, 0).astype(np.uint8))


def read_map_png(data: bytes | Path) -> np.ndarray:
    """A map PNG back to residuals in [0, 1]."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        return np.asarray(image, dtype=np.float32) / MAP_SCALE


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_labels(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """A scan's map (NaN where not scored) -> its uint8 mask: ANOMALOUS above `pixel_threshold`,
    NOT_SCORED where the map is NaN, else 0; made a plane at a time, so that it costs one uint8 array
    beside the map (a scan at preprocess.max_voxels: 134 MB, its map 537 MB)."""
    labels = np.empty(anomaly_map.shape, np.uint8)
    for index, plane in enumerate(anomaly_map):
        labels[index] = np.where(np.isnan(plane), NOT_SCORED, plane > pixel_threshold)
    return labels


def write_pngs(anomaly_map: np.ndarray, mask: np.ndarray, paths: tuple[Path, Path]) -> None:
    """A 2-D image's map and mask, to `paths` (map, mask)."""
    make_folders(paths[0].parent)  # it mirrors the input's folders, however deep
    paths[0].write_bytes(map_png(anomaly_map))
    paths[1].write_bytes(mask_png(mask))
