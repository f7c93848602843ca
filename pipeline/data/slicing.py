"""A folder of CT volumes (NIfTI, with lesion masks) -> labelled slices the slice pipeline reads.

Layouts (any depth below the dataset's root; `.nii` or `.nii.gz`):

    <case>.nii.gz + <case>_mask.nii.gz            a mask beside its image
    <case>.nii.gz + masks/<case>.nii.gz           masks in a `masks/` folder (same relative path)
    Healthy/<case>.nii.gz                         no mask needed: every slice is healthy
    <patient>/<case>.nii.gz                       a folder per patient (else each case is a patient)

A slice is anomalous when its mask has any voxel there. Each slice is written as a DICOM file in
Hounsfield units (so `preprocess.dicom_window` applies to it as to any CT slice) under
`Healthy/` or `Tumor/`, carrying its patient, its volume (series) and its position in the scan; each
anomalous slice's mask goes to `Masks/` under the same relative path (`.png`), the pixel truth of
evaluate's localisation metrics. A volume that cannot be read or labelled is a reject with its reason;
the others are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from pipeline.data.classes import FOLDERS, HEALTHY, TUMOR, mask_path
from pipeline.data.dicom import write_ct_slice
from pipeline.data.volumes import (
    MASK_SUFFIX,
    MASKS_FOLDER,
    case_name,
    is_mask,
    is_volume,
    read_mask,
    read_volume,
)
from pipeline.errors import ImageDecodeError
from pipeline.progress import progress

HU_RANGE = (-1024.0, 3071.0)  # what a 12-bit CT stores; anything beyond is clipped


@dataclass(frozen=True)
class Case:
    image: Path
    mask: Path | None
    patient: str
    name: str  # unique within the dataset: the image's path below the root, without suffix
    healthy: bool  # under a Healthy folder: every slice healthy even without a mask


def has_volumes(root: Path) -> bool:
    return any(is_volume(path) for path in root.rglob("*") if path.is_file())


def find_cases(root: Path, folders: dict[str, str] = FOLDERS) -> list[Case]:
    """Every image volume under `root` with its mask (if any), patient and class folder (`folders`:
    class -> the dataset's name for its folder)."""
    healthy_folder = folders[HEALTHY].lower()
    class_folders = {folder.lower() for folder in folders.values()}
    cases = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and is_volume(p)):
        relative = path.relative_to(root)
        parts = [part.lower() for part in relative.parts[:-1]]
        if is_mask(relative):
            continue
        suffix = path.name[len(case_name(path)) :]
        beside = path.with_name(f"{case_name(path)}{MASK_SUFFIX}{suffix}")
        in_folder = root / MASKS_FOLDER / relative
        mask = next((m for m in (beside, in_folder) if m.is_file()), None)
        folders = [part for part in relative.parts[:-1] if part.lower() not in class_folders]
        stem = PurePosixPath(*relative.parts[:-1], case_name(path)).as_posix()
        patient = folders[0] if folders else case_name(path)
        cases.append(Case(path, mask, patient, stem, healthy_folder in parts))
    return cases


def _write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def write_case(case: Case, out_dir: Path, healthy_folder: str = FOLDERS[HEALTHY]) -> int:
    """Write the case's slices (and anomalous slices' masks) under `out_dir`; return the slice count.
    Raises ImageDecodeError naming the file when the volume or its mask cannot be used."""
    volume = read_volume(case.image)
    if case.mask is not None:
        masks = read_mask(case.mask, volume)
    elif case.healthy:
        masks = np.zeros(volume.slices.shape, dtype=bool)
    else:
        raise ImageDecodeError(
            case.image,
            f"no mask ({case.name}{MASK_SUFFIX}.nii.gz or {MASKS_FOLDER}/...) and not under a "
            f"{healthy_folder}/ folder: its slices cannot be labelled",
        )
    for index, (hu, mask) in enumerate(zip(volume.slices, masks, strict=True)):
        anomalous = bool(mask.any())
        path = f"{FOLDERS[TUMOR if anomalous else HEALTHY]}/{case.name}_z{index:03d}.dcm"
        (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
        write_ct_slice(
            out_dir / path, np.clip(hu, *HU_RANGE), patient=case.patient, series=case.name, position=index
        )
        if anomalous:
            _write_mask(out_dir / mask_path(path), mask)
    return len(volume.slices)


def slice_volumes(root: Path, out_dir: Path, folders: dict[str, str] = FOLDERS) -> list[tuple[str, str]]:
    """Slice every case under `root` into `out_dir`; return (volume path, reason) for those rejected."""
    rejects = []
    for case in progress(find_cases(root, folders), desc="volumes", unit="volume"):
        try:
            write_case(case, out_dir, folders[HEALTHY])
        except ImageDecodeError as err:
            rejects.append((case.image.relative_to(root).as_posix(), err.reason))
    return rejects
