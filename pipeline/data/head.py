"""Find the head in a slice, so that nothing outside it (burned-in scanner text, rulers, the table,
the film's background) reaches the model or the score.

Real slices come from many sources: many tumor slices carry text around the head, and healthy and
tumor slices differ in size, format and window. An autoencoder scored over the whole image learns
those cues as readily as anatomy. The head is the largest bright connected component once thin
bridges are opened; its holes (ventricles, dark tissue) are filled in.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def head_mask(gray: np.ndarray, threshold: float, opening: int = 2) -> np.ndarray:
    """Boolean mask of the head in a [0, 1] slice: pixels above `threshold`, opened `opening` times
    (so text touching the skull by a pixel or two does not join it), largest component, holes filled.
    A slice with nothing above the threshold gives an empty mask."""
    foreground = gray > threshold
    if opening:
        foreground = ndimage.binary_opening(foreground, iterations=opening)
    labels, count = ndimage.label(foreground)
    if count == 0:
        return foreground
    sizes = np.bincount(labels[foreground])  # pixels per component (index 0 unused): no full-size copies
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes[1:])) + 1)


def bounding_box(mask: np.ndarray, margin: float) -> tuple[slice, slice]:
    """Rows and columns of the mask's bounding box, widened by `margin` times its longer side
    (clipped to the image); the whole image when the mask is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return slice(0, mask.shape[0]), slice(0, mask.shape[1])
    pad = round(margin * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
    return (
        slice(max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, mask.shape[0])),
        slice(max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, mask.shape[1])),
    )


def normalize_intensity(gray: np.ndarray, mask: np.ndarray, low: float, high: float) -> np.ndarray:
    """Stretch the head's `low`..`high` percentiles to 0..1 (clipped), so that slices windowed or
    exported differently by their sources look alike; outside the mask stays as it is."""
    if not mask.any():
        return gray
    lo, hi = np.percentile(gray[mask], [low, high])
    if hi <= lo:
        return gray
    return np.where(mask, np.clip((gray - lo) / (hi - lo), 0.0, 1.0), gray).astype(np.float32)
