"""CT volumes (NIfTI files) as stacks of axial slices in Hounsfield units, and back.

A volume is reoriented to the closest canonical (RAS+) axes, so that its third axis runs from the feet
to the top of the head whatever the file's own orientation, and each axial slice is shown as a
radiologist reads it: anterior at the top, the patient's right on the image's left. `to_volume`
inverts both, so a map computed on the slices lands on the file's own voxel grid and affine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.data.guards import DEFAULT_LIMITS, Limits
from pipeline.errors import ImageDecodeError

SUFFIXES = (".nii.gz", ".nii")
MASK_SUFFIX = "_mask"  # <case>_mask.nii.gz beside <case>.nii.gz
MASKS_FOLDER = "masks"  # or masks/<case>.nii.gz under the dataset's root


def is_volume(path: Path | str) -> bool:
    return str(path).lower().endswith(SUFFIXES)


def is_mask(relative: Path) -> bool:
    """A lesion mask by the dataset layouts' names: `<case>_mask.nii.gz`, or a volume under `masks/`."""
    return is_volume(relative) and (
        case_name(relative).endswith(MASK_SUFFIX)
        or MASKS_FOLDER in (part.lower() for part in relative.parts[:-1])
    )


def case_name(path: Path | str) -> str:
    """`brain_01.nii.gz` -> `brain_01`."""
    name = Path(path).name
    return next(name[: -len(suffix)] for suffix in SUFFIXES if name.lower().endswith(suffix))


@dataclass(frozen=True)
class Volume:
    slices: np.ndarray  # (n, rows, columns) float32 HU, inferior to superior, displayed orientation
    affine: np.ndarray  # the file's own 4x4 voxel-to-world (RAS mm) matrix
    shape: tuple[int, ...]  # the file's own voxel grid
    orientation: np.ndarray  # nibabel orientation of the file's axes relative to RAS+


def _display(plane: np.ndarray) -> np.ndarray:
    """A RAS+ (x, y) plane -> (rows, columns): anterior up, patient's right on the left."""
    return plane[::-1, ::-1].T


def _undisplay(image: np.ndarray) -> np.ndarray:
    return image.T[::-1, ::-1]


def _load(path: Path) -> nib.Nifti1Image:
    try:
        image = nib.load(path)
        image.get_fdata(dtype=np.float32)  # decode now, so a truncated file is this error
    except Exception as err:  # noqa: BLE001 -- nibabel raises ImageFileError, EOFError, zlib and OSErrors
        raise ImageDecodeError(path, f"cannot read NIfTI: {' '.join(str(err).split())}") from None
    if len(image.shape) != 3 or min(image.shape) == 0:
        raise ImageDecodeError(path, f"expected a non-empty 3-D volume, got shape {image.shape}")
    return image


def read_volume(path: Path, limits: Limits = DEFAULT_LIMITS) -> Volume:
    """The volume's axial slices in HU (NIfTI stores CT in HU: its scaling is applied here)."""
    image = _load(path)
    orientation = nib.orientations.io_orientation(image.affine)
    data = nib.orientations.apply_orientation(image.get_fdata(dtype=np.float32), orientation)
    slices = np.stack([_display(data[:, :, k]) for k in range(data.shape[2])]).astype(np.float32)
    return Volume(slices, image.affine, tuple(image.shape), orientation)


def read_mask(path: Path, volume: Volume, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """A mask volume (any non-zero voxel is the finding) as (n, rows, columns) booleans aligned with
    `volume`'s slices; a mask on another grid is an error, not a silent misalignment."""
    image = _load(path)
    if tuple(image.shape) != volume.shape or not np.allclose(image.affine, volume.affine, atol=1e-3):
        raise ImageDecodeError(
            path,
            f"mask grid {tuple(image.shape)} (or its affine) differs from its image's {volume.shape}",
        )
    data = nib.orientations.apply_orientation(image.get_fdata(dtype=np.float32), volume.orientation)
    return np.stack([_display(data[:, :, k]) != 0 for k in range(data.shape[2])])


def to_volume(slice_maps: np.ndarray, volume: Volume) -> np.ndarray:
    """(n, rows, columns) maps on the displayed slices -> an array on the file's own voxel grid."""
    canonical = np.stack([_undisplay(image) for image in slice_maps], axis=2)
    ras = nib.orientations.axcodes2ornt("RAS")
    back = nib.orientations.ornt_transform(ras, volume.orientation)
    return nib.orientations.apply_orientation(canonical, back)


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write `data` (on a scan's voxel grid) as NIfTI with the scan's affine, so viewers overlay it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
