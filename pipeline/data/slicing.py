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
CSV (`pipeline.data.sources.copy_labelled`) may name the slices' classes instead of masks. Where the
caller knows an anomalous slice's lesion kind (`Kinds`: the built-in phantoms, a labels CSV's `kind`
column), it is recorded beside the class folders (`classes.add_kinds`) for the manifest's `kind`
column. A scan that cannot be read or labelled is a reject with its reason; the others are used.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from pipeline.core.errors import ImageDecodeError
from pipeline.core.io import make_folders
from pipeline.core.progress import progress
from pipeline.data.classes import FOLDERS, HEALTHY, TUMOR, add_kinds, mask_path
from pipeline.data.dicom import HU_RANGE, is_dicom, placement, write_ct_slice
from pipeline.data.guards import DEFAULT_LIMITS, Limits, list_files
from pipeline.data.series import Series, find_series, is_segmentation, read_header, read_segmentation
from pipeline.data.volumes import (
    MASK_SUFFIX,
    MASKS_FOLDER,
    case_name,
    is_mask,
    is_volume,
    open_volume,
    read_mask,
)

Labels = dict[int | None, str]  # slice index (None: every slice) -> class, from a labels CSV
Kinds = dict[int | None, str]  # slice index (None: every slice) -> lesion kind (`classes.KINDS`)


@dataclass(frozen=True)
class Case:
    image: Path  # a NIfTI file, or the folder of a DICOM series
    mask: Path | None  # a NIfTI mask or a DICOM-SEG
    patient: str
    name: str  # unique within the dataset: the image's path below the root, without suffix
    healthy: bool  # under a Healthy folder: every slice healthy even without a mask
    series: Series | None = None  # the DICOM series, for a series' case


def has_scans(root: Path) -> bool:
    """Whether `root` holds CT volumes or DICOM-SEG masks: the layouts this module reads (what
    `guards.list_files` finds: nothing outside `root`)."""
    files, _ = list_files(root)
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


def volume_case(
    root: Path, path: Path, folders: dict[str, str] = FOLDERS, listed: set[Path] | None = None
) -> Case:
    """A NIfTI file's case: its mask (beside it or under `masks/`, one of the `listed` files where given:
    a link to outside the root is no mask), patient and class folder."""
    relative = path.relative_to(root)
    suffix = path.name[len(case_name(path)) :]
    beside = path.with_name(f"{case_name(path)}{MASK_SUFFIX}{suffix}")
    in_folder = root / MASKS_FOLDER / relative
    mask = next(
        (m for m in (beside, in_folder) if (m in listed if listed is not None else m.is_file())), None
    )
    others, healthy = _in_class_folder(relative, folders)
    stem = PurePosixPath(*relative.parts[:-1], case_name(path)).as_posix()
    return Case(path, mask, others[0] if others else case_name(path), stem, healthy)


def _series_cases(
    root: Path, files: list[Path], folders: dict[str, str], limits: Limits
) -> tuple[list[Case], dict[Path, str]]:
    """Each DICOM series among `files` with the DICOM-SEG drawn on it, if any; and the files of series
    refused for their size, with the reason."""
    found, rest, refused = find_series(files, limits)
    segmentations: dict[str, Path] = {}
    for path in rest:
        header = read_header(path, limits)
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
    return cases, refused


def find_cases(
    root: Path, folders: dict[str, str] = FOLDERS, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[Case], list[tuple[Path, str]]]:
    """Every scan under `root`: NIfTI volumes with their masks, DICOM series with their DICOM-SEG, each
    with its patient and class folder (`folders`: class -> the dataset's name for its folder); and every
    file that is in none, with the reason (a series refused for its size, a lone slice, a mask without
    its scan, a file of another kind). Files are what `guards.list_files` finds: nothing outside `root`;
    hidden files (.DS_Store, ...) are left out; what cannot be read at all (`guards.list_files`'
    problems: a link to outside `root`, an unreadable folder) is in none either."""
    files, problems = list_files(root)
    listed = set(files)
    volumes = [
        volume_case(root, path, folders, listed)
        for path in files
        if is_volume(path) and not is_mask(path.relative_to(root))
    ]
    dicom = [path for path in files if not is_volume(path) and is_dicom(path)]
    series, refused = _series_cases(root, dicom, folders, limits)
    cases = volumes + series
    used = {case.image for case in volumes} | {case.mask for case in cases if case.mask is not None}
    used |= {file for case in series for file in case.series.files}
    left = problems + [
        (path, refused.get(path) or _not_a_scan(root, path, limits))
        for path in files
        if path not in used and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return cases, left


def _not_a_scan(root: Path, path: Path, limits: Limits) -> str:
    """Why a file of a folder of scans is in no scan."""
    if is_mask(path.relative_to(root)):
        return "a lesion mask whose scan is not here (<case>.nii.gz beside <case>_mask.nii.gz, or masks/...)"
    header = read_header(path, limits) if is_dicom(path) else None
    if header is None:
        return "not a scan: a folder of scans holds NIfTI volumes and DICOM series (with their masks)"
    if is_segmentation(header):
        return "a DICOM-SEG drawn on no series found here"
    try:
        placement(header, path)
    except ImageDecodeError as err:
        return err.reason
    return "a DICOM slice in no series (a series has two or more slices, each at its own position)"


def _write_mask(path: Path, mask: np.ndarray) -> None:
    make_folders(path.parent)
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


def _write_slice(
    out_dir: Path, path: str, write: Callable[[Path], object], mask: np.ndarray | None
) -> list[Path]:
    """Write a slice (by `write`) at `path` under `out_dir`, and its mask beside it when `mask` (an
    anomalous slice's) marks a finding; return the files written."""
    make_folders((out_dir / path).parent)
    write(out_dir / path)
    if mask is None or not mask.any():
        return [out_dir / path]
    _write_mask(out_dir / mask_path(path), mask)
    return [out_dir / path, out_dir / mask_path(path)]


def _slice_list(indices: np.ndarray, shown: int = 5) -> str:
    """[3, 4, 5, 9] -> "slices 3..5, 9": runs of consecutive slices, the first `shown` of them."""
    runs = np.split(indices, np.flatnonzero(np.diff(indices) != 1) + 1)
    text = ", ".join(f"{run[0]}..{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs[:shown])
    return f"slice{'s' if len(indices) > 1 else ''} {text}{', ...' if len(runs) > shown else ''}"


def _write_volume(case: Case, out_dir: Path, labels: Labels | None, limits: Limits) -> dict[int, str]:
    """A NIfTI case's slices, read a slab at a time in the file's order; returns each written slice's
    path below `out_dir` by index. Training data must be clean: a volume with non-finite voxels is a
    reject as a whole, as is one whose voxels cannot all be read; what was written of it is removed."""
    with open_volume(case.image, limits) as volume:
        masks = read_mask(case.mask, volume, limits) if case.mask else None
        classes = _slice_classes(case, masks, volume.count, labels)
        non_finite = np.zeros(volume.count, dtype=np.int64)
        files: list[Path] = []
        written: dict[int, str] = {}
        try:
            for start, stop in volume.slabs():
                slab = volume.read(start, stop)
                non_finite[start:stop] = np.count_nonzero(~np.isfinite(slab), axis=(1, 2))
                if non_finite.any():
                    continue  # a reject: the remaining slabs are only counted, for the reason
                for index, hu in enumerate(slab, start):
                    if classes[index] is None:
                        continue
                    written[index] = f"{FOLDERS[classes[index]]}/{case.name}_z{index:03d}.dcm"
                    files += _write_slice(
                        out_dir,
                        written[index],
                        partial(
                            write_ct_slice,
                            hu=np.clip(hu, *HU_RANGE),
                            patient=case.patient,
                            series=case.name,
                            position=index,
                        ),
                        masks[index] if classes[index] == TUMOR and masks is not None else None,
                    )
            if non_finite.any():
                count = int(non_finite.sum())
                raise ImageDecodeError(
                    case.image,
                    f"{count} non-finite voxel value{'s' if count > 1 else ''} (NaN or infinite) in "
                    f"{_slice_list(np.flatnonzero(non_finite))}: training scans must be finite",
                )
        except ImageDecodeError:
            for file in files:
                file.unlink(missing_ok=True)
            raise
    return written


def _write_series(case: Case, out_dir: Path, labels: Labels | None, limits: Limits) -> dict[int, str]:
    """A DICOM series' slices, copied; returns each written slice's path below `out_dir` by index."""
    count, series = len(case.series.files), case.series
    masks = read_segmentation(case.mask, series, limits) if case.mask else None
    written: dict[int, str] = {}
    for index, label in enumerate(_slice_classes(case, masks, count, labels)):
        if label is None:
            continue
        written[index] = f"{FOLDERS[label]}/{case.name}/{series.files[index].name}"
        _write_slice(
            out_dir,
            written[index],
            partial(shutil.copyfile, series.files[index]),
            masks[index] if label == TUMOR and masks is not None else None,
        )
    return written


def write_case(
    case: Case,
    out_dir: Path,
    labels: Labels | None = None,
    limits: Limits = DEFAULT_LIMITS,
    kinds: Kinds | None = None,
) -> int:
    """Write the case's slices (and anomalous slices' masks) under `out_dir`; return how many were
    written. `kinds`: the lesion kinds of its slices, recorded for those written as anomalous. Raises
    ImageDecodeError naming the file when the scan or its mask cannot be used."""
    write = _write_volume if case.series is None else _write_series
    written = write(case, out_dir, labels, limits)
    if kinds:
        add_kinds(
            out_dir,
            {
                path: kind
                for index, path in written.items()
                if path.startswith(f"{FOLDERS[TUMOR]}/") and (kind := kinds.get(index, kinds.get(None)))
            },
        )
    return len(written)


def slice_scans(
    root: Path,
    out_dir: Path,
    folders: dict[str, str] = FOLDERS,
    limits: Limits = DEFAULT_LIMITS,
    kinds: Mapping[PurePosixPath, Kinds] | None = None,
) -> list[tuple[str, str]]:
    """Slice every case under `root` into `out_dir`; return (path, reason) for the scans rejected and the
    files in no scan. `kinds`: lesion kinds by scan (a NIfTI file, or a series' folder, relative to
    `root`) and slice, recorded for the anomalous slices written (`write_case`)."""
    cases, left = find_cases(root, folders, limits)
    rejects = [(path.relative_to(root).as_posix(), reason) for path, reason in left]
    for case in progress(cases, desc="scans", unit="scan"):
        try:
            scan = PurePosixPath(case.image.relative_to(root).as_posix())
            write_case(case, out_dir, limits=limits, kinds=(kinds or {}).get(scan))
        except ImageDecodeError as err:
            rejects.append((case.image.relative_to(root).as_posix(), err.reason))
    return rejects
