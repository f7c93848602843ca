"""Small CT volumes for tests: a head-like phantom in Hounsfield units, written as NIfTI or a DICOM series;
and a DICOM file rewritten with one defect."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom


def head_volume(size: int = 48, slices: int = 8, seed: int = 0) -> np.ndarray:
    """(size, size, slices) HU: air around a skull ring around brain tissue, smaller towards both ends."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    radius = np.hypot(x, y)
    volume = np.full((size, size, slices), -1000.0)
    for k in range(slices):
        extent = 0.9 * np.sin(np.pi * (k + 1) / (slices + 1)) ** 0.5
        volume[..., k][radius < extent] = 1000.0
        volume[..., k][radius < extent - 0.12] = 35.0 + rng.normal(0, 3, (radius < extent - 0.12).sum())
    return volume.astype(np.float32)


def lesion_mask(shape: tuple[int, int, int], slices: range, centre: tuple[int, int] = (20, 24)) -> np.ndarray:
    """A small box lesion on `slices`."""
    mask = np.zeros(shape, dtype=np.uint8)
    for k in slices:
        mask[centre[0] - 3 : centre[0] + 3, centre[1] - 3 : centre[1] + 3, k] = 1
    return mask


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def write_series(
    folder: Path,
    slices: np.ndarray,
    *,
    patient: str = "p1",
    series: str = "ct",
    step: float = 2.5,
    spacing: float = 0.8,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    names: list[str] | None = None,
) -> list[Path]:
    """A DICOM series of `slices` ((n, rows, columns) HU, feet to head), `step` mm apart; `names` are
    the files' names in slice order (a scanner's names need not sort by position)."""
    from pipeline.data.dicom import write_ct_slice

    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"IM{index:04d}.dcm" for index in range(len(slices))]
    return [
        write_ct_slice(
            folder / name,
            hu,
            patient=patient,
            series=series,
            position=index * step,
            spacing=spacing,
            orientation=orientation,
        )
        for index, (name, hu) in enumerate(zip(names, slices, strict=True))
    ]


def edited_dicom(path: Path, edit: Callable[[pydicom.Dataset], object]) -> Path:
    """Rewrite a valid DICOM file with what `edit` changes in its data set (one defect, a compression)."""
    dataset = pydicom.dcmread(path)
    edit(dataset)
    dataset.save_as(path, enforce_file_format=True)
    return path
