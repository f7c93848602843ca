"""Neighbouring slices as input channels (2.5D, `preprocess.neighbours`).

A lesion spans several slices and healthy anatomy changes smoothly from one to the next, so the model
sees, beside a slice's own channels, the brain window (channel 0) of the `n` slices below and above it in
the same scan: channels k-1, k+1, ..., k-n, k+n, appended after the slice's own. Where a neighbour does
not exist (the scan's ends, a lone image, a slice missing from the data) the slice's own channel 0 stands
in, so that every slice has the same input shape and an edge is seen as "nothing changes". One pure
function serves every path (prepared splits, the blanked copy, predict's volumes and series, the served
model), so a slice gets the same channels wherever it is scored.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

ScanKey = Hashable | None  # which scan a row is a slice of; None: a lone image


def stack_neighbours(
    images: np.ndarray, scans: Sequence[ScanKey], slices: Sequence[int | None], n: int
) -> np.ndarray:
    """(rows, s, s, c) -> (rows, s, s, c + 2n): each row's own channels, then channel 0 of the rows of the
    same scan at slices k-1, k+1, ..., k-n, k+n (k: the row's slice), or its own channel 0 where the batch
    has no such row. Rows may come in any order, scans interleaved; n = 0 returns `images` itself."""
    if n == 0:
        return images
    keys = list(zip(scans, slices, strict=True))
    if len(keys) != len(images):
        raise ValueError(f"{len(images)} images but {len(keys)} scan keys and slice indices")
    rows = {(scan, int(k)): row for row, (scan, k) in enumerate(keys) if _known(scan, k)}
    offsets = [sign * step for step in range(1, n + 1) for sign in (-1, 1)]
    source = np.array(
        [
            [rows.get((scan, int(k) + offset), row) if _known(scan, k) else row for offset in offsets]
            for row, (scan, k) in enumerate(keys)
        ],
        dtype=np.int64,
    ).reshape(len(images), len(offsets))
    neighbours = images[..., 0][source]  # (rows, 2n, s, s)
    return np.concatenate([images, np.moveaxis(neighbours, 1, -1).astype(images.dtype)], axis=-1)


def _known(scan: ScanKey, k: int | None) -> bool:
    return scan is not None and k is not None and not pd.isna(k)


def frame_keys(frame: pd.DataFrame) -> tuple[list[ScanKey], list[int | None]]:
    """Each manifest row's scan (patient, series) and slice index; None for a lone image (no series or no
    place in one)."""
    if not {"series", "slice"} <= set(frame.columns):
        return [None] * len(frame), [None] * len(frame)
    patients = frame["patient"] if "patient" in frame.columns else pd.Series("", index=frame.index)
    scans: list[ScanKey] = []
    slices: list[int | None] = []
    for patient, series, k in zip(patients, frame["series"], frame["slice"], strict=True):
        lone = pd.isna(k) or pd.isna(series) or str(series) == ""
        scans.append(None if lone else (str(patient), str(series)))
        slices.append(None if lone else int(k))
    return scans, slices
