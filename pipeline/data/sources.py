"""Bring a dataset into `data/raw/{Healthy,Tumor}/`: the built-in synthetic slices, a local folder or
zip laid out like the public dataset or holding CT volumes (`pipeline.data.slicing`), or the public
dataset itself from Kaggle. Each source registers
its fetcher under the `source` tag of its config class (`pipeline.config.DataConfig`)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import ArchiveLimits, DataConfig, KaggleData, LocalData, SyntheticData, SyntheticVolumes
from pipeline.data import slicing, synthetic
from pipeline.data.classes import FOLDERS, MASKS
from pipeline.data.guards import DEFAULT_LIMITS, HEAD_BYTES, Limits, file_type, list_files
from pipeline.data.volumes import is_mask, is_volume
from pipeline.errors import DataError, ImageDecodeError
from pipeline.progress import progress
from pipeline.registry import Registry

log = logging.getLogger(__name__)

# fetch(config, out_dir, seed, archive, limits) fills the empty folder out_dir with one subfolder per class
# and returns (file, reason) for what it could not use (whole volumes, unreadable folders; single files are
# the manifest's to reject); `archive` limits what a zip it extracts may declare, `limits` what a volume may
Rejects = list[tuple[str, str]]
Fetcher = Callable[[Any, Path, int, ArchiveLimits, Limits], Rejects]
SOURCES: Registry[Fetcher] = Registry("data source", "data.source")
Folders = dict[str, str]  # class -> the name of its folder in a user's dataset
CT_FOLDER = "Brain Tumor CT scan Images"  # the CT half of the public dataset (beside an MRI half)
ARCHIVE_LIMITS = ArchiveLimits()  # what a zip may declare, unless the config says otherwise


def _class_dirs(folder: Path, folders: Folders) -> dict[str, Path] | None:
    """The folder's class subfolders (any letter case) by class, or None if one is missing."""
    children = {child.name.lower(): child for child in folder.iterdir() if child.is_dir()}
    found = {cls: children.get(name.lower()) for cls, name in folders.items()}
    return found if all(found.values()) else None  # type: ignore[return-value]


def find_dataset_root(path: Path, folders: Folders = FOLDERS) -> Path:
    """The folder holding the class folders (Healthy/ and Tumor/ unless `folders` names others):
    `path` itself, else its `Brain Tumor CT scan Images` folder, else the one folder below it that
    has both."""
    if _class_dirs(path, folders):
        return path
    named = ",".join(folders.values())
    pair = "/ and ".join(folders.values())
    below = [folder for folder in sorted(path.rglob("*")) if folder.is_dir() and _class_dirs(folder, folders)]
    ct = [folder for folder in below if folder.name.lower() == CT_FOLDER.lower()]
    for candidates in (ct, below):
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            listed = ", ".join(str(c) for c in candidates)
            raise DataError(
                f"{path}: several folders hold {pair}/ ({listed}); point data.path at one of them"
            )
    raise DataError(
        f"{path}: no {pair}/ folders found (expected '{CT_FOLDER}/{{{named}}}' or '{{{named}}}' directly, "
        "or CT volumes; other class folder names: data.folders.healthy=... data.folders.tumor=...)"
    )


def is_zip(path: Path) -> bool:
    """A zip archive, or what begins like one: a truncated zip is still one, for `safe_extract` to
    report as such."""
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return zipfile.is_zipfile(handle) or file_type(handle.read(HEAD_BYTES)) == "zip"


def safe_extract(archive: Path, target: Path, limits: ArchiveLimits) -> None:
    """Extract a zip, refusing the whole archive before anything is written if any entry would land
    outside `target`, or its entries declare more than `limits` allow (zipfile writes no more than an
    entry declares)."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            root = target.resolve()
            total = 0
            for entry in zipped.infolist():
                if not (root / entry.filename).resolve().is_relative_to(root):
                    raise DataError(
                        f"{archive}: entry '{entry.filename}' would be written outside the "
                        "extraction folder; refusing to extract this archive"
                    )
                total += entry.file_size
                if total > limits.max_size:
                    raise DataError(
                        f"{archive}: its entries up to '{entry.filename}' hold {total} bytes uncompressed, "
                        f"above archive.max_size ({limits.max_size}); refusing to extract this archive"
                    )
                if entry.file_size > limits.max_ratio * max(entry.compress_size, 1):
                    raise DataError(
                        f"{archive}: entry '{entry.filename}' expands {entry.compress_size} bytes to "
                        f"{entry.file_size} (above archive.max_ratio, {limits.max_ratio:g} times); "
                        "refusing to extract this archive (a zip bomb?)"
                    )
            zipped.extractall(target)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive}: truncated or corrupt zip ({err})") from None


def copy_classes(root: Path, out_dir: Path, folders: Folders = FOLDERS) -> Rejects:
    """Copy every file under root's class folders into out_dir's Healthy/ and Tumor/, keeping relative
    paths, and root's `Masks/` (lesion masks: `Masks/<a slice's path below its class folder>.png`, the
    pixel truth of evaluate's localisation metrics). Every file is copied, images or not: the manifest
    decides, and lists what it rejects. Returns what could not be read at all (an unreadable folder, a
    dangling link)."""
    dirs = _class_dirs(root, folders)
    assert dirs is not None, root
    listed = {name: list_files(folder) for name, folder in dirs.items()}
    files = {name: found for name, (found, _) in listed.items()}
    for name, found in files.items():
        if not found:
            raise DataError(f"{dirs[name]}: the {folders[name]} class folder is empty")
    jobs = [
        (path, out_dir / FOLDERS[cls] / path.relative_to(dirs[cls])) for cls in dirs for path in files[cls]
    ]
    masks = next(
        (child for child in root.iterdir() if child.is_dir() and child.name.lower() == MASKS.lower()), None
    )
    if masks is not None:
        jobs += [
            (path, out_dir / MASKS / path.relative_to(masks))
            for path in sorted(masks.rglob("*"))
            if path.is_file()
        ]
    for source, destination in progress(jobs, desc="copy", unit="file"):
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    return [
        (path.relative_to(root).as_posix(), reason)
        for _, problems in listed.values()
        for path, reason in problems
    ]


def read_labels(labels: Path, root: Path, folders: Folders) -> pd.DataFrame:
    """A labels CSV: `path` (below `root`: an image, a NIfTI volume, or a folder such as a patient's or
    a series'), `class` (healthy/tumor or the class folders' names), optionally `slice` (one slice of a
    volume, inferior to superior from 0); each row checked, with the lines at fault named."""
    try:
        table = pd.read_csv(labels, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{labels}: not a readable CSV ({err})") from None
    if not {"path", "class"} <= set(table.columns):
        raise DataError(f"{labels}: needs the columns 'path' and 'class' (has {', '.join(table.columns)})")
    classes = {name.lower(): cls for cls, name in folders.items()} | {cls: cls for cls in folders}
    slices = table["slice"] if "slice" in table.columns else pd.Series("", index=table.index)
    table = table.assign(label=table["class"].str.lower().map(classes), slice=slices.str.strip())
    volume = table["path"].map(is_volume)
    problems = {
        "class is not one of " + ", ".join(sorted(classes)): table["label"].isna(),
        "path does not exist": ~table["path"].map(lambda path: (root / path).exists()),
        "slice is not a whole number >= 0": (table["slice"] != "") & ~table["slice"].str.isdigit(),
        "slice is given for a file that is not a volume": (table["slice"] != "") & ~volume,
    }
    for what, bad in problems.items():
        if bad.any():
            rows = "; ".join(f"line {i + 2}: {table.at[i, 'path']}" for i in table.index[bad][:3])
            raise DataError(f"{labels}: {int(bad.sum())} row(s) whose {what}, e.g. {rows}")
    return table


def copy_labelled(
    root: Path, out_dir: Path, labels: Path, folders: Folders, limits: Limits = DEFAULT_LIMITS
) -> Rejects:
    """Bring what a labels CSV lists (`read_labels`) into out_dir's class folders: files are copied, a
    folder's files take its class (unless listed themselves), a volume is sliced with its class or its
    listed slices' classes (`slicing.write_case`). Files it does not list are rejects."""
    table = read_labels(labels, root, folders)
    files: dict[Path, str] = {}
    for path, label in zip(table["path"], table["label"], strict=True):  # folders first, files override
        if (root / path).is_dir():
            files |= {file: label for file in sorted((root / path).rglob("*")) if file.is_file()}
    listed = table[~table["path"].map(lambda path: (root / path).is_dir())]
    files |= {root / path: label for path, label in zip(listed["path"], listed["label"], strict=True)}
    files = {file: label for file, label in files.items() if not is_mask(file.relative_to(root))}
    per_slice = {
        path: {int(s) if s else None: label for s, label in zip(rows["slice"], rows["label"], strict=True)}
        for path, rows in listed[listed["path"].map(is_volume)].groupby("path")
    }
    rejects: Rejects = []
    for file, label in sorted(files.items()):
        if not is_volume(file):
            continue
        relative = file.relative_to(root).as_posix()
        case = dataclasses.replace(slicing.volume_case(root, file, folders), mask=None)
        try:
            slicing.write_case(case, out_dir, per_slice.get(relative, {None: label}), limits)
        except ImageDecodeError as err:
            rejects.append((relative, err.reason))
    images = {file: label for file, label in files.items() if not is_volume(file)}
    for file, label in progress(sorted(images.items()), desc="copy", unit="file"):
        destination = out_dir / FOLDERS[label] / file.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, destination)
    return rejects + [
        (file.relative_to(root).as_posix(), f"not in the labels CSV {labels.name}")
        for file in sorted(root.rglob("*"))
        if file.is_file()
        and not file.name.startswith(".")
        and file not in files
        and file != labels
        and not is_mask(file.relative_to(root))
    ]


@SOURCES.register("synthetic")
def fetch_synthetic(
    data: SyntheticData, out_dir: Path, seed: int, archive: ArchiveLimits, limits: Limits
) -> Rejects:
    synthetic.generate(
        out_dir, data.n_healthy, data.n_tumor, seed, min_size=data.min_size, max_size=data.max_size
    )
    return []


@SOURCES.register("synthetic_volumes")
def fetch_synthetic_volumes(
    data: SyntheticVolumes, out_dir: Path, seed: int, archive: ArchiveLimits, limits: Limits
) -> Rejects:
    """Phantom scans written as NIfTI volumes with masks (or DICOM series with DICOM-SEGs), then sliced
    like a user's scans."""
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as volumes:
        synthetic.generate_volumes(
            Path(volumes),
            data.patients,
            data.slices,
            data.size,
            data.lesion_share,
            seed,
            file_format=data.format,
        )
        return _from_folder(Path(volumes), out_dir, limits)


@SOURCES.register("local")
def fetch_local(data: LocalData, out_dir: Path, seed: int, archive: ArchiveLimits, limits: Limits) -> Rejects:
    path = data.path
    if is_zip(path):
        with tempfile.TemporaryDirectory(dir=out_dir.parent) as extracted:
            safe_extract(path, Path(extracted), archive)
            return _from_folder(Path(extracted), out_dir, limits, data)
    if path.is_dir():
        return _from_folder(path, out_dir, limits, data)
    raise DataError(f"{path}: neither a folder nor a zip archive")


def _from_folder(root: Path, out_dir: Path, limits: Limits, data: LocalData | None = None) -> Rejects:
    """CT volumes are sliced; files listed in a labels CSV are copied by their class; otherwise the
    class folders' images are copied."""
    folders = data.folders.model_dump() if data else FOLDERS
    if data and data.labels:
        return copy_labelled(root, out_dir, data.labels, folders, limits)
    if slicing.has_scans(root):
        rejects = slicing.slice_scans(root, out_dir, folders, limits)
        if not any(out_dir.rglob("*.dcm")):
            listed = "; ".join(f"{file}: {reason}" for file, reason in rejects)
            raise DataError(f"{root}: none of its scans could be used ({listed})")
        return rejects
    return copy_classes(find_dataset_root(root, folders), out_dir, folders)


@SOURCES.register("kaggle")
def fetch_kaggle(
    data: KaggleData, out_dir: Path, seed: int, archive: ArchiveLimits, limits: Limits
) -> Rejects:
    import kagglehub
    from kagglehub.config import get_kaggle_credentials

    if get_kaggle_credentials() is None:
        raise DataError(
            "data=kaggle needs Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), "
            "or put kaggle.json in ~/.kaggle/ (or in $KAGGLE_CONFIG_DIR). Without network access, download "
            "the dataset elsewhere and use data=local data.path=/path/to/it"
        )
    try:
        downloaded = Path(kagglehub.dataset_download(data.handle))
    except Exception as err:  # noqa: BLE001 -- kagglehub raises requests, HTTP and its own errors alike
        raise DataError(f"downloading Kaggle dataset '{data.handle}' failed: {err}") from None
    return copy_classes(find_dataset_root(downloaded), out_dir)


def fetch(
    data: DataConfig,
    out_dir: Path,
    seed: int,
    archive: ArchiveLimits = ARCHIVE_LIMITS,
    limits: Limits = DEFAULT_LIMITS,
) -> Rejects:
    """Fill the empty folder `out_dir` with `Healthy/` and `Tumor/` (and `Masks/` where lesion masks
    exist); return what could not be used, with the reason. `archive`: what a zip may declare; `limits`:
    what a volume's header may."""
    return SOURCES.get(data.source)(data, out_dir, seed, archive, limits)
