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


BONE = 0.95  # of the model's input (a brain window, stretched): bone and nothing else reaches it
MIN_CAVITY = 0.25  # of the head: a smaller enclosed space is no cranial cavity (skull base, vertex)


def bone_mask(gray: np.ndarray, head: np.ndarray) -> np.ndarray:
    """The skull (and anything as dense) inside `head`: what the intracranial space is bounded by."""
    return head & (gray >= BONE)


def intracranial_mask(gray: np.ndarray, head: np.ndarray, rim: int = 2) -> np.ndarray:
    """The cranial cavity of a slice and the `rim` pixels of bone around it (the inner table, where
    epidural and subdural bleeds lie): the space the bone inside `head` encloses. Scalp, the rest of the
    skull and what lies outside are left out. A slice whose bone encloses no cavity of at least
    MIN_CAVITY of the head (the skull base, the vertex, an image without a closed skull) keeps its head."""
    bone = bone_mask(gray, head)
    cavity = ndimage.binary_fill_holes(bone) & ~bone
    labels, count = ndimage.label(cavity)
    if count == 0:
        return head
    sizes = np.bincount(labels[cavity])
    largest = labels == int(np.argmax(sizes[1:])) + 1
    if sizes[1:].max() < MIN_CAVITY * head.sum():
        return head
    return largest | (bone & (ndimage.distance_transform_edt(~largest) <= rim))


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
