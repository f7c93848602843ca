"""Where is the tumor? Pixel-level quality of the residual heat maps, on data that has tumor outlines.

A lesion mask is `Masks/<the slice's path below its class folder>.png` in the raw folder: the built-in
synthetic data writes one per tumor, a volume's mask is sliced there (`pipeline.data.slicing`); the
public 2D dataset has none. Outlines go through the same crop, padding and resizing as their slices,
so they line up with the model's input; the residual maps are compared with them inside the scored
region only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipeline.config import PreprocessConfig
from pipeline.data.classes import mask_path
from pipeline.data.images import decode, preprocess, read_image, to_grayscale


def tumor_outlines(raw_dir: Path, frame: pd.DataFrame, config: PreprocessConfig) -> np.ndarray | None:
    """(n, size, size) boolean outlines of the rows' tumors, aligned with their model inputs; None
    unless every row has one."""
    files = [raw_dir / mask_path(path) for path in frame["path"]]
    if not files or not all(file.is_file() for file in files):
        return None
    outlines = []
    for path, file in zip(frame["path"], files, strict=True):
        outline = to_grayscale(read_image(file)) > 0.5
        aligned = preprocess(decode(raw_dir / path, config.dicom_window).pixels, config, outline)[1]
        outlines.append(aligned > 0.5)
    return np.stack(outlines)


def pixel_metrics(maps: np.ndarray, outlines: np.ndarray, pixel_threshold: float) -> dict[str, float]:
    """Pixel ROC AUC of the residual maps against the outlines, over the scored pixels (maps > 0),
    and the Dice overlap of the pixels above `pixel_threshold` with the outlines, over all slices."""
    scored = maps > 0
    truth, values = outlines[scored], maps[scored]
    flagged = maps > pixel_threshold
    overlap = 2 * np.sum(flagged & outlines)
    return {
        "pixel_roc_auc": float(roc_auc_score(truth, values)) if 0 < truth.sum() < truth.size else np.nan,
        "dice": float(overlap / max(int(flagged.sum() + outlines.sum()), 1)),
    }
