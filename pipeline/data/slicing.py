"""A folder of CT scans (NIfTI volumes, DICOM series) with lesion masks -> labelled slices the slice
pipeline reads.

Layouts (any depth below the dataset's root; `.nii` or `.nii.gz`):

    <case>.nii.gz + <case>_mask.nii.gz            a mask beside its image
    <case>.nii.gz + masks/<case>.nii.gz           masks in a `masks/` folder (same relative path)
    <series>/*.dcm + a DICOM-SEG                  a DICOM series and a segmentation (Modality SEG, any
                                                  file name, anywhere below the root) drawn on it
    Healthy/<case>.nii.gz, Healthy/<series>/      no mask needed: every slice is healthy
    <patient>/<case>.nii.gz                       a folder per patient (a series: its PatientID; else
                                                  each case is a patient)

A slice is anomalous when its mask has any voxel there (any segment of a DICOM-SEG). A volume's slices
are written as DICOM files in Hounsfield units (so `preprocess.dicom_window` applies to them as to any
CT slice) under `Healthy/` or `Tumor/`, carrying its patient, its volume (series) and its position in
the scan; a series' files are copied there as they are. Each anomalous slice's mask goes to `Masks/`
under the same relative path (`.png`), the pixel truth of evaluate's localisation metrics. A labels
CSV (`pipeline.data.sources.copy_labelled`) may name the slices' classes instead of masks. A scan
that cannot be read or labelled is a reject with its reason; the others are used.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from pipeline.data.classes import FOLDERS, HEALTHY, TUMOR, mask_path
from pipeline.data.dicom import HU_RANGE, is_dicom, write_ct_slice
from pipeline.data.guards import DEFAULT_LIMITS, Limits
from pipeline.data.series import Series, find_series, is_segmentation, read_header, read_segmentation
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

Labels = dict[int | None, str]  # slice index (None: every slice) -> class, from a labels CSV


@dataclass(frozen=True)
class Case:
    image: Path  # a NIfTI file, or the folder of a DICOM series
    mask: Path | None  # a NIfTI mask or a DICOM-SEG
    patient: str
    name: str  # unique within the dataset: the image's path below the root, without suffix
    healthy: bool  # under a Healthy folder: every slice healthy even without a mask
    series: Series | None = None  # the DICOM series, for a series' case


def has_scans(root: Path) -> bool:
    """Whether `root` holds CT volumes or DICOM-SEG masks: the layouts this module reads."""
    files = [path for path in root.rglob("*") if path.is_file()]
    return any(is_volume(path) for path in files) or any(
        is_segmentation(read_header(path)) for path in files if is_dicom(path)
    )


def _in_class_folder(relative: Path, folders: dict[str, str]) -> tuple[list[str], bool]:
    """The relative path's folders that are not class folders, and whether one is the Healthy folder."""
    class_folders = {folder.lower() for folder in folders.values()}
    parts = relative.parts[:-1]
    return [part for part in parts if part.lower() not in class_folders], folders[HEALTHY].lower() in (
        part.lower() for part in parts
    )


def volume_case(root: Path, path: Path, folders: dict[str, str] = FOLDERS) -> Case:
    """A NIfTI file's case: its mask (beside it or under `masks/`), patient and class folder."""
    relative = path.relative_to(root)
    suffix = path.name[len(case_name(path)) :]
    beside = path.with_name(f"{case_name(path)}{MASK_SUFFIX}{suffix}")
    in_folder = root / MASKS_FOLDER / relative
    mask = next((m for m in (beside, in_folder) if m.is_file()), None)
    others, healthy = _in_class_folder(relative, folders)
    stem = PurePosixPath(*relative.parts[:-1], case_name(path)).as_posix()
    return Case(path, mask, others[0] if others else case_name(path), stem, healthy)


def _series_cases(root: Path, files: list[Path], folders: dict[str, str]) -> list[Case]:
    """Each DICOM series among `files` with the DICOM-SEG drawn on it, if any."""
    found, rest = find_series(files)
    segmentations: dict[str, Path] = {}
    for path in rest:
        header = read_header(path)
        if is_segmentation(header):
            for item in header.get("ReferencedSeriesSequence", []):
                segmentations[str(item.SeriesInstanceUID)] = path
    per_folder = Counter(series.files[0].parent for series in found)
    cases = []
    for series in found:
        relative = series.files[0].relative_to(root)
        others, healthy = _in_class_folder(relative, folders)
        name = relative.parent.as_posix()
        if per_folder[series.files[0].parent] > 1:
            name += f"_{series.uid[-8:]}"
        patient = str(series.headers[0].get("PatientID") or (others[0] if others else name))
        cases.append(
            Case(series.files[0].parent, segmentations.get(series.uid), patient, name, healthy, series)
        )
    return cases


def find_cases(root: Path, folders: dict[str, str] = FOLDERS) -> list[Case]:
    """Every scan under `root`: NIfTI volumes with their masks, DICOM series with their DICOM-SEG, each
    with its patient and class folder (`folders`: class -> the dataset's name for its folder)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    volumes = [
        volume_case(root, path, folders)
        for path in files
        if is_volume(path) and not is_mask(path.relative_to(root))
    ]
    dicom = [path for path in files if not is_volume(path) and is_dicom(path)]
    return volumes + _series_cases(root, dicom, folders)


def _write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _slice_classes(
    case: Case, masks: np.ndarray | None, count: int, labels: Labels | None
) -> list[str | None]:
    """Each slice's class: from the labels CSV (an unlisted slice: None, not used), else its mask,
    else healthy under a Healthy folder; else the case cannot be labelled."""
    if labels is not None:
        return [labels.get(index, labels.get(None)) for index in range(count)]
    if masks is not None:
        return [TUMOR if mask.any() else HEALTHY for mask in masks]
    if case.healthy:
        return [HEALTHY] * count
    raise ImageDecodeError(
        case.image,
        f"no mask ({case.name}{MASK_SUFFIX}.nii.gz, {MASKS_FOLDER}/... or a DICOM-SEG) and not under the "
        "healthy class folder: its slices cannot be labelled",
    )


def write_case(
    case: Case, out_dir: Path, labels: Labels | None = None, limits: Limits = DEFAULT_LIMITS
) -> int:
    """Write the case's slices (and anomalous slices' masks) under `out_dir`; return how many were
    written. Raises ImageDecodeError naming the file when the scan or its mask cannot be used."""
    if case.series is not None:
        count, series = len(case.series.files), case.series
        masks = read_segmentation(case.mask, series) if case.mask else None
        names = [f"{case.name}/{file.name}" for file in series.files]

        def write(index: int, path: Path) -> None:
            shutil.copyfile(series.files[index], path)

    else:
        volume = read_volume(case.image, limits)
        count = len(volume.slices)
        masks = read_mask(case.mask, volume, limits) if case.mask else None
        names = [f"{case.name}_z{index:03d}.dcm" for index in range(count)]

        def write(index: int, path: Path) -> None:
            hu = np.clip(volume.slices[index], *HU_RANGE)
            write_ct_slice(path, hu, patient=case.patient, series=case.name, position=index)

    written = 0
    for index, label in enumerate(_slice_classes(case, masks, count, labels)):
        if label is None:
            continue
        path = f"{FOLDERS[label]}/{names[index]}"
        (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
        write(index, out_dir / path)
        written += 1
        if label == TUMOR and masks is not None and masks[index].any():
            _write_mask(out_dir / mask_path(path), masks[index])
    return written


def slice_scans(
    root: Path, out_dir: Path, folders: dict[str, str] = FOLDERS, limits: Limits = DEFAULT_LIMITS
) -> list[tuple[str, str]]:
    """Slice every case under `root` into `out_dir`; return (scan path, reason) for those rejected."""
    rejects = []
    for case in progress(find_cases(root, folders), desc="scans", unit="scan"):
        try:
            write_case(case, out_dir, limits=limits)
        except ImageDecodeError as err:
            rejects.append((case.image.relative_to(root).as_posix(), err.reason))
    return rejects
