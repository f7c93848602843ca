"""Bring a dataset into `data/raw/{Healthy,Tumor}/`: the built-in synthetic slices, a local folder or
zip laid out like the public dataset or holding CT volumes (`pipeline.data.slicing`), or the public
dataset itself from Kaggle. Each source is one registration (`register`): the name that `data.source`
picks it by, its config class (the keys of `data`) and its fetcher."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import lzma
import os
import posixpath
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core.config import ArchiveLimits, Section, SourceConfig, invalid
from pipeline.core.errors import ConfigError, DataError, ImageDecodeError
from pipeline.core.io import make_folders, remove_tree
from pipeline.core.progress import progress
from pipeline.core.registry import Registry
from pipeline.data import slicing, synthetic
from pipeline.data.classes import FOLDERS, HEALTHY, KINDS, MASKS, TUMOR, add_kinds, kind_of
from pipeline.data.guards import (
    DEFAULT_LIMITS,
    HEAD_BYTES,
    NAME_MAX,
    PATH_MAX,
    Limits,
    file_type,
    list_files,
    walk,
)
from pipeline.data.volumes import is_mask, is_volume

log = logging.getLogger(__name__)

# fetch(config, out_dir, seed, archive, limits) fills the empty folder out_dir with one subfolder per class
# and returns (file, reason) for what it could not use (whole volumes, unreadable folders, links to outside
# the data folder, a labels CSV's bad rows, a zip's unsafe entries; single images are the manifest's to
# reject); `archive` limits what a zip it extracts may declare, `limits` what a volume may. Nothing outside
# the folder the user named is read or written.
Rejects = list[tuple[str, str]]
Fetcher = Callable[[Any, Path, int, ArchiveLimits, Limits], Rejects]


class SourceSection(SourceConfig):
    """A data source's config class: `source` and the source's own keys, each with its type and range;
    an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclasses.dataclass(frozen=True)
class Source:
    """A registered data source: the class its `data` section is validated with, and its fetcher."""

    config: type[SourceSection]
    fetch: Fetcher


SOURCES: Registry[Source] = Registry("data source", "data.source")
Folders = dict[str, str]  # class -> the name of its folder in a user's dataset
CT_FOLDER = "Brain Tumor CT scan Images"  # the CT half of the public dataset (beside an MRI half)
ARCHIVE_LIMITS = ArchiveLimits()  # what a zip may declare, unless the config says otherwise


def register(name: str, config: type[SourceSection]) -> Callable[[Fetcher], Fetcher]:
    """Decorator: `@register("local", LocalData) def fetch_local(data: LocalData, out_dir, seed, archive,
    limits) -> Rejects`: the source that `data.source=local` picks, the class its config is validated
    with (`check_data`) and the fetcher it is given to (`fetch`)."""

    def add(fetcher: Fetcher) -> Fetcher:
        SOURCES.register(name)(Source(config, fetcher))
        return fetcher

    return add


def check_data(data: SourceConfig) -> SourceSection:
    """The `data` section validated by its source's config class; a ConfigError naming an unknown source
    (and the registered ones), or each offending key."""
    config = SOURCES.get(data.source).config
    try:
        return config.model_validate(data.model_dump())
    except ValidationError as err:
        raise ConfigError(invalid(err, "data")) from None


def _class_dirs(subfolders: list[Path], folders: Folders) -> dict[str, Path] | None:
    """Among a folder's subfolders, its class folders (any letter case) by class, or None if one is
    missing."""
    children = {child.name.lower(): child for child in subfolders}
    found = {cls: children.get(name.lower()) for cls, name in folders.items()}
    return found if all(found.values()) else None  # type: ignore[return-value]


def _subfolders(folder: Path) -> list[Path]:
    """The folder's subfolders (not symbolic links to folders: `walk`)."""
    return next(walk(folder))[1]


def find_dataset_root(path: Path, folders: Folders = FOLDERS, shown: Path | None = None) -> Path:
    """The folder holding the class folders (Healthy/ and Tumor/ unless `folders` names others):
    `path` itself, else its `Brain Tumor CT scan Images` folder, else the one folder below it that
    has both. Messages name `path` as `shown` (an archive, for the folder it was extracted to)."""
    shown = shown or path
    if _class_dirs(_subfolders(path), folders):
        return path
    named = ",".join(folders.values())
    pair = "/ and ".join(folders.values())
    below = sorted(folder for folder, subfolders, _, _ in walk(path) if _class_dirs(subfolders, folders))
    ct = [folder for folder in below if folder.name.lower() == CT_FOLDER.lower()]
    for candidates in (ct, below):
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            listed = ", ".join(str(shown / c.relative_to(path)) for c in candidates)
            raise DataError(
                f"{shown}: several folders hold {pair}/ ({listed}); point data.path at one of them"
            )
    raise DataError(
        f"{shown}: no {pair}/ folders found (expected '{CT_FOLDER}/{{{named}}}' or '{{{named}}}' directly, "
        "or CT volumes; other class folder names: data.folders.healthy=... data.folders.tumor=...)"
    )


def is_zip(path: Path) -> bool:
    """A zip archive, or what begins like one: a truncated zip is still one, for `safe_extract` to
    report as such."""
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
        return file_type(head) == "zip" or zipfile.is_zipfile(handle)


def _unsafe_entry(name: str, target: Path) -> str | None:
    """Why a zip entry cannot be extracted below `target` by its name, or None."""
    relative = posixpath.normpath(name)
    if posixpath.isabs(name):
        return "an absolute entry name: not extracted"
    if relative == ".." or relative.startswith("../"):
        return "entry name points outside the archive: not extracted"
    if any(len(os.fsencode(part)) > NAME_MAX for part in relative.split("/")):
        return f"entry name too long for the file system (a name above {NAME_MAX} bytes): not extracted"
    if len(os.fsencode(target / relative)) >= PATH_MAX:
        return f"entry name too long for the file system (a path above {PATH_MAX} bytes): not extracted"
    return None


# What reading or writing an entry raises: zipfile's own errors (RuntimeError: encrypted), its
# decompressors', a truncated archive's, the file system's
_ENTRY_ERRORS = (
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,
    RuntimeError,
)


def safe_extract(archive: Path, target: Path, limits: ArchiveLimits) -> Rejects:
    """Extract a zip's entries below `target`; return (entry, reason) for those not extracted: a name
    absolute, leading outside `target` or too long for the file system, an entry that cannot be read
    (corrupt, encrypted). The whole archive is refused, before anything is written, if its entries
    declare more than `limits` allow (a zip bomb; zipfile reads no more than an entry declares).
    Messages name the archive and the entry, never `target` (a temporary folder)."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            rejects: Rejects = []
            entries: list[zipfile.ZipInfo] = []
            total = 0
            for entry in zipped.infolist():
                reason = _unsafe_entry(entry.filename, target)
                if reason:
                    rejects.append((entry.filename, reason))
                    continue
                entries.append(entry)
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
            for entry in entries:
                reason = _extract_entry(zipped, entry, target / posixpath.normpath(entry.filename))
                if reason:
                    rejects.append((entry.filename, reason))
            return rejects
    except (zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{archive}: truncated or corrupt zip ({err})") from None
    except OSError as err:
        raise DataError(f"{archive}: cannot be read ({err.strerror})") from None


def _extract_entry(zipped: zipfile.ZipFile, entry: zipfile.ZipInfo, destination: Path) -> str | None:
    """Write one entry to `destination`; why it could not be (nothing of it left behind), or None."""
    try:
        make_folders(destination if entry.is_dir() else destination.parent)
        if not entry.is_dir():
            with zipped.open(entry) as source, destination.open("wb") as copy:
                shutil.copyfileobj(source, copy)
        return None
    except _ENTRY_ERRORS as err:
        if not entry.is_dir():
            with contextlib.suppress(OSError):  # a folder there (an entry "a" after "a/b"): left as it is
                destination.unlink(missing_ok=True)
        detail = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return f"cannot be extracted ({detail})"


def _copy(jobs: list[tuple[Path, Path]], shown: Callable[[Path], str]) -> Rejects:
    """Copy each (source, destination); (source as `shown` names it, reason) for what could not be."""
    rejects: Rejects = []
    for source, destination in progress(jobs, desc="copy", unit="file"):
        try:
            make_folders(destination.parent)
            shutil.copyfile(source, destination)
        except OSError as err:
            rejects.append((shown(source), f"cannot be copied ({err.strerror})"))
    return rejects


def copy_classes(root: Path, out_dir: Path, folders: Folders = FOLDERS, shown: Path | None = None) -> Rejects:
    """Copy every file under root's class folders into out_dir's Healthy/ and Tumor/, keeping relative
    paths, and root's `Masks/` (lesion masks: `Masks/<a slice's path below its class folder>.png`, the
    pixel truth of evaluate's localisation metrics). Every file is copied, images or not: the manifest
    decides, and lists what it rejects. Returns what could not be read at all (an unreadable folder, a
    dangling link, a link to outside `root`). Messages name `root` as `shown`."""
    subfolders = _subfolders(root)
    dirs = _class_dirs(subfolders, folders)
    assert dirs is not None, root
    listed = {name: list_files(folder, within=root) for name, folder in dirs.items()}
    for name, (found, _) in listed.items():
        if not found:
            raise DataError(
                f"{(shown or root) / dirs[name].relative_to(root)}: the {folders[name]} class folder is empty"
            )
    jobs = [
        (path, out_dir / FOLDERS[cls] / path.relative_to(dirs[cls]))
        for cls, (found, _) in listed.items()
        for path in found
    ]
    masks = next((child for child in subfolders if child.name.lower() == MASKS.lower()), None)
    if masks is not None:
        listed[MASKS] = list_files(masks, within=root)
        jobs += [(path, out_dir / MASKS / path.relative_to(masks)) for path in listed[MASKS][0]]
    problems = [
        (path.relative_to(root).as_posix(), reason)
        for _, problems in listed.values()
        for path, reason in problems
    ]
    return problems + _copy(jobs, lambda source: source.relative_to(root).as_posix())


@dataclasses.dataclass(frozen=True)
class LabelRow:
    """A row of a labels CSV that names a file or folder below the root."""

    line: int  # in the CSV file, from 1 (the header)
    target: Path  # what `path` names, resolved: a file or folder below the root
    label: str | None  # the class; None where rows contradict each other: the target (slice) is not used
    slice: int | None  # one slice of a volume, else None
    kind: str = ""  # the lesion kind (`classes.KINDS`) of an anomalous row, '' where not given


def _open_csv(labels: Path) -> list[tuple[int, dict[str, str]]]:
    """A CSV's records, each with the line it starts on and its columns by (stripped) name."""
    if not labels.is_file():  # a pipe would block
        raise DataError(f"{labels}: not a regular file; data.labels names a CSV")
    try:
        with labels.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            if not {"path", "class"} <= set(header):
                raise DataError(f"{labels}: needs the columns 'path' and 'class' (has {', '.join(header)})")
            records, line = [], reader.line_num + 1
            for values in reader:
                if any(value.strip() for value in values):
                    records.append((line, dict(zip(header, values, strict=False))))
                line = reader.line_num + 1
            return records
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{labels}: not a readable CSV ({err})") from None


def _path_problems(path: str, target: Path | None, slice_: str) -> list[str]:
    """What is wrong with a labels CSV row's `path` and `slice` (`target`: what the path names, resolved;
    None when it is outside the root, which is then neither looked at nor read)."""
    if not path:
        return ["no path"]
    if os.path.isabs(path):
        return [f"{path} is an absolute path (give it relative to data.path)"]
    if target is None:
        return [f"{path} is outside data.path"]
    try:
        mode: int | None = target.stat().st_mode
    except OSError:
        mode = None
    problems = []
    if mode is None:
        problems.append(f"{path} does not exist")
    elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        problems.append(f"{path} is not a regular file (a pipe, socket or device)")
    if slice_ and not slice_.isdigit():
        problems.append(f"slice '{slice_}' is not a whole number >= 0")
    elif slice_ and not (mode is not None and stat.S_ISREG(mode) and is_volume(target)):
        problems.append(f"a slice is given for {path}, which is not a volume")
    return problems


def _resolve_below(root: Path, path: str) -> Path | None:
    """What `path` (relative to the resolved `root`) names, after `..` and symbolic links; None if that
    is outside `root` or cannot be resolved (a loop of links, a NUL character)."""
    try:
        target = (root / path).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return target if target.is_relative_to(root) else None


def read_labels(labels: Path, root: Path, folders: Folders) -> tuple[list[LabelRow], Rejects]:
    """A labels CSV: `path` (below `root`: an image, a NIfTI volume, or a folder such as a patient's or
    a series'), `class` (healthy/tumor or the class folders' names), optionally `slice` (one slice of a
    volume, inferior to superior from 0) and `kind` (an anomalous row's lesion kind, one of
    `classes.KINDS`, any letter case; empty where unknown: the manifest's `kind` column). Returns its
    usable rows, and (path, reason naming the line) for each other row: a path absolute or outside
    `root` (after `..` and symbolic links) or missing, an unknown class, a bad slice, an unknown kind or
    a kind on a healthy row, a file (or slice) labelled as two classes (or two kinds). A CSV that cannot
    be read, or lacks the columns, is one DataError."""
    top = root.resolve()
    classes = {name.lower(): cls for cls, name in folders.items()} | {cls: cls for cls in folders}
    rows: list[LabelRow] = []
    rejects: Rejects = []
    for line, record in _open_csv(labels):
        path, given = record.get("path") or "", (record.get("class") or "").strip()
        slice_ = (record.get("slice") or "").strip()
        target = _resolve_below(top, path) if path and not os.path.isabs(path) else None
        label = classes.get(given.lower())
        kind = kind_of(record.get("kind"))
        problems = _path_problems(path, target, slice_)
        if label is None:
            problems.insert(0, f"class '{given}' is not one of {', '.join(sorted(classes))}")
        if kind is None:
            problems.append(f"kind '{(record.get('kind') or '').strip()}' is not one of {', '.join(KINDS)}")
        elif kind and label == HEALTHY:
            problems.append(f"a kind ({kind}) is given for a healthy row")
        if problems:
            rejects.append((path or labels.name, f"{labels.name} line {line}: {'; '.join(problems)}"))
        else:
            rows.append(LabelRow(line, target, label, int(slice_) if slice_ else None, kind))
    return _without_contradictions(rows, top, labels.name, rejects)


def _without_contradictions(
    rows: list[LabelRow], root: Path, csv_name: str, rejects: Rejects
) -> tuple[list[LabelRow], Rejects]:
    """The rows, those labelling one file (or one slice of a volume) as two classes (or two kinds)
    replaced by one row without a class (not used, not even with its folder's class), a reject naming
    their lines. The same class twice is no contradiction, nor a file's row against its folder's."""
    lines: dict[tuple[Path, int | None], dict[tuple[str | None, str], list[int]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for row in rows:
        lines[row.target, row.slice][row.label, row.kind].append(row.line)
    contradicted = {key for key, by_label in lines.items() if len(by_label) > 1}
    unused = []
    for target, slice_ in sorted(contradicted, key=lambda key: (key[0], -1 if key[1] is None else key[1])):
        said = " and ".join(
            f"{label}{f' ({kind})' if kind else ''} on line{'s' if len(found) > 1 else ''} "
            f"{', '.join(map(str, found))}"
            for (label, kind), found in lines[target, slice_].items()
        )
        which = "" if slice_ is None else f"slice {slice_} "
        rejects.append((target.relative_to(root).as_posix(), f"{csv_name}: {which}labelled {said}"))
        first = min(min(found) for found in lines[target, slice_].values())
        unused.append(LabelRow(first, target, None, slice_))
    return [row for row in rows if (row.target, row.slice) not in contradicted] + unused, rejects


def copy_labelled(
    root: Path, out_dir: Path, labels: Path, folders: Folders, limits: Limits = DEFAULT_LIMITS
) -> Rejects:
    """Bring what a labels CSV lists (`read_labels`) into out_dir's class folders: files are copied, a
    folder's files take its class (a folder's row overrides its parent folder's, a file's row both), a
    volume is sliced with its class or its listed slices' classes (`slicing.write_case`); the anomalous
    ones' kinds, where given, are recorded (`classes.add_kinds`), taken like the classes. Nothing
    outside `root` is read. Rejects: the CSV's bad rows, what cannot be read, files it does not list."""
    top = root.resolve()
    rows, rejects = read_labels(labels, top, folders)
    files: dict[Path, slicing.Labels] = {}
    kinds: dict[Path, slicing.Kinds] = {}
    for row in sorted((row for row in rows if row.target.is_dir()), key=lambda row: len(row.target.parts)):
        below = [file.resolve() for file in list_files(row.target, within=top)[0]]
        files |= {file: {None: row.label} for file in below}
        kinds |= {file: {None: row.kind} for file in below}
    listed: dict[Path, slicing.Labels] = defaultdict(dict)
    listed_kinds: dict[Path, slicing.Kinds] = defaultdict(dict)
    for row in rows:
        if not row.target.is_dir():
            listed[row.target][row.slice] = row.label
            listed_kinds[row.target][row.slice] = row.kind
    files |= listed  # a class None (contradicting rows): the file, or the volume's slice, is not used
    kinds |= listed_kinds
    files = {file: classes for file, classes in files.items() if not is_mask(file.relative_to(top))}
    for file, classes in sorted(files.items()):
        if not is_volume(file):
            continue
        case = dataclasses.replace(slicing.volume_case(top, file, folders), mask=None)
        try:
            slicing.write_case(case, out_dir, classes, limits, kinds.get(file))
        except ImageDecodeError as err:
            rejects.append((file.relative_to(top).as_posix(), err.reason))
    images = [
        (file, out_dir / FOLDERS[classes[None]] / file.relative_to(top))
        for file, classes in sorted(files.items())
        if not is_volume(file) and classes[None] is not None
    ]
    rejects += _copy(images, lambda source: source.relative_to(top).as_posix())
    copied = {copy for _, copy in images if copy.is_file()}
    add_kinds(
        out_dir,
        {
            copy.relative_to(out_dir).as_posix(): kinds[file][None]
            for file, copy in images
            if copy in copied and files[file][None] == TUMOR and kinds.get(file, {}).get(None)
        },
    )
    found, problems = list_files(top)
    used = set(files) | {labels.resolve()}
    return (
        rejects
        + [(path.relative_to(top).as_posix(), reason) for path, reason in problems]
        + [
            (file.relative_to(top).as_posix(), f"not in the labels CSV {labels.name}")
            for file in found
            if not file.name.startswith(".")
            and file.resolve() not in used
            and not is_mask(file.relative_to(top))
        ]
    )


class SyntheticData(SourceSection):
    n_healthy: int = Field(ge=10)
    n_tumor: int = Field(ge=4)
    min_size: int = Field(ge=32, le=4096)
    max_size: int = Field(ge=32, le=4096)

    @model_validator(mode="after")
    def _sizes_ordered(self) -> SyntheticData:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) is larger than max_size ({self.max_size})")
        return self


@register("synthetic", SyntheticData)
def fetch_synthetic(
    data: SyntheticData, out_dir: Path, seed: int, archive: ArchiveLimits, limits: Limits
) -> Rejects:
    """The built-in 2D slices; every anomalous one shows a tumor (its kind)."""
    synthetic.generate(
        out_dir, data.n_healthy, data.n_tumor, seed, min_size=data.min_size, max_size=data.max_size
    )
    add_kinds(
        out_dir, {f"{FOLDERS[TUMOR]}/{file.name}": TUMOR for file in (out_dir / FOLDERS[TUMOR]).iterdir()}
    )
    return []


class SyntheticVolumes(SourceSection):
    """Built-in CT volumes, one per patient, with lesion masks (`synthetic.generate_volumes`)."""

    patients: int = Field(ge=6, le=100_000)
    slices: int = Field(ge=4, le=512)  # per scan, skull base to skull top
    size: int = Field(ge=32, le=1024)  # pixels per side
    lesion_share: float = Field(gt=0, lt=1)  # of the patients
    format: Literal["nifti", "dicom"] = "nifti"  # NIfTI volumes + masks, or DICOM series + DICOM-SEG


@register("synthetic_volumes", SyntheticVolumes)
def fetch_synthetic_volumes(
    data: SyntheticVolumes, out_dir: Path, seed: int, archive: ArchiveLimits, limits: Limits
) -> Rejects:
    """Phantom scans written as NIfTI volumes with masks (or DICOM series with DICOM-SEGs), then sliced
    like a user's scans, each lesioned slice's kind recorded."""
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as volumes:
        kinds = synthetic.generate_volumes(
            Path(volumes),
            data.patients,
            data.slices,
            data.size,
            data.lesion_share,
            seed,
            file_format=data.format,
        )
        return _from_folder(Path(volumes), out_dir, limits, kinds=kinds)


class ClassFolders(Section):
    """The names of a dataset's class folders (any letter case): e.g. `normal` / `anomalous`."""

    healthy: str = Field(default="Healthy", min_length=1)
    tumor: str = Field(default="Tumor", min_length=1)  # the anomalous class, whatever the anomaly


class LocalData(SourceSection):
    path: Path
    folders: ClassFolders = ClassFolders()
    labels: Path | None = None  # a CSV of `path` (below `path`) -> `class`, instead of class folders

    @field_validator("path", "labels")
    @classmethod
    def _exists(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser()
        if not path.exists():
            raise ValueError(f"'{path}' does not exist")
        return path.resolve()


@register("local", LocalData)
def fetch_local(data: LocalData, out_dir: Path, seed: int, archive: ArchiveLimits, limits: Limits) -> Rejects:
    path = data.path
    if is_zip(path):
        extracted = Path(tempfile.mkdtemp(dir=out_dir.parent))
        try:
            rejects = safe_extract(path, extracted, archive)
            return rejects + _from_folder(extracted, out_dir, limits, data, shown=path)
        finally:
            remove_tree(extracted)  # not TemporaryDirectory: its shutil.rmtree recurses, once per level
    if path.is_dir():
        return _from_folder(path, out_dir, limits, data)
    raise DataError(f"{path}: neither a folder nor a zip archive")


def _from_folder(
    root: Path,
    out_dir: Path,
    limits: Limits,
    data: LocalData | None = None,
    shown: Path | None = None,
    kinds: Mapping[PurePosixPath, slicing.Kinds] | None = None,
) -> Rejects:
    """CT volumes are sliced (with `kinds`, the scans' lesion kinds, where known: `slicing.slice_scans`);
    files listed in a labels CSV are copied by their class; otherwise the class folders' images are
    copied. Messages name `root` as `shown` (the archive it was extracted from)."""
    folders = data.folders.model_dump() if data else FOLDERS
    shown = shown or root
    if data and data.labels:
        return copy_labelled(root, out_dir, data.labels, folders, limits)
    if slicing.has_scans(root):
        rejects = slicing.slice_scans(root, out_dir, folders, limits, kinds)
        if not any(file.suffix == ".dcm" for file in list_files(out_dir)[0]):
            listed = "; ".join(f"{file}: {reason}" for file, reason in rejects)
            raise DataError(f"{shown}: none of its scans could be used ({listed})")
        return rejects
    dataset = find_dataset_root(root, folders, shown)
    return copy_classes(dataset, out_dir, folders, shown / dataset.relative_to(root))


class KaggleData(SourceSection):
    handle: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")


@register("kaggle", KaggleData)
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
    data: SourceSection,
    out_dir: Path,
    seed: int,
    archive: ArchiveLimits = ARCHIVE_LIMITS,
    limits: Limits = DEFAULT_LIMITS,
) -> Rejects:
    """Fill the empty folder `out_dir` with `Healthy/` and `Tumor/` (and `Masks/` where lesion masks
    exist); return what could not be used, with the reason. `archive`: what a zip may declare; `limits`:
    what a volume's header may."""
    return SOURCES.get(data.source).fetch(data, out_dir, seed, archive, limits)
