"""What a predict PATH stands for: its files (a folder searched recursively, a zip's entries), and among
them the DICOM series, each one scan.

Hidden files (.DS_Store, ...), lesion-mask volumes (named as in the dataset layouts:
`<case>_mask.nii.gz`, `masks/...`) and DICOM-SEG files are not inputs. What cannot be read at all (an
unreadable folder, a dangling link) is an input with its error, so that it gets a row like a bad file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.core.config import ArchiveLimits
from pipeline.core.errors import DataError
from pipeline.core.io import display_name
from pipeline.data.guards import Limits, list_files
from pipeline.data.series import Series, find_series, is_segmentation, read_header
from pipeline.data.sources import is_zip, safe_extract
from pipeline.data.volumes import is_mask


@dataclass(frozen=True)
class InputFile:
    file: Path  # where to read it
    path: str  # how the CSV names it (inside a zip: archive.zip/inner/path; `io.display_name`)
    relative: Path  # its place under PATH, which its heat map mirrors
    error: str = ""  # why it cannot be read at all (an unreadable folder, a dangling link)


def collect(path: Path, extract_to: Path, limits: ArchiveLimits) -> list[InputFile]:
    """Every file PATH stands for (a zip extracted to `extract_to`, within `limits`); hidden files
    (.DS_Store, ...) and lesion-mask volumes (named as in the dataset layouts: `<case>_mask.nii.gz`,
    `masks/...`) are skipped."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if not path.is_file() and not path.is_dir():
        raise DataError(f"{path}: not a file or folder (a pipe, socket or device)")
    unextracted: list[InputFile] = []  # a zip's entries not extracted (a name leading outside it, ...)
    if is_zip(path):
        unextracted = [
            InputFile(
                extract_to,
                display_name(f"{path.as_posix()}/{entry}"),
                Path(PurePosixPath(entry).name),
                reason,
            )
            for entry, reason in safe_extract(path, extract_to, limits)
        ]
        root, shown = extract_to, path
    elif path.is_file():
        return [InputFile(path, display_name(str(path)), Path(path.name))]
    else:
        root, shown = path, path
    files, problems = list_files(root)
    found = sorted([(file, "") for file in files] + problems)
    inputs = [
        InputFile(
            file, display_name((shown / file.relative_to(root)).as_posix()), file.relative_to(root), error
        )
        for file, error in found
        if not any(part.startswith(".") for part in file.relative_to(root).parts)
        and not is_mask(file.relative_to(root))
    ] + unextracted
    if not inputs:
        raise DataError(f"{path}: no files to score")
    return inputs


@dataclass(frozen=True)
class Scan:
    """A DICOM series among the inputs, scored slice by slice like any DICOM file."""

    series: Series
    orders: list[int]  # its slices' places in the input files, in the series' order
    name: str  # how the CSV's `scan` column names it: its folder (+ `_s<n>` where one folder holds several)
    relative: Path  # its place under PATH: where its maps go under --maps


def find_scans(
    files: list[InputFile], orders: list[int], limits: Limits
) -> tuple[list[Scan], list[int], dict[int, str]]:
    """The DICOM series among the files at `orders`, the orders of the files in none, and the orders of
    the files of series refused for their size (above `limits`) with the reason; DICOM-SEG files
    (lesion masks, like mask volumes) are none of these."""
    by_file = {files[order].file: order for order in orders}
    found, single, refused = find_series([files[order].file for order in orders], limits)
    per_folder = Counter(series.files[0].parent for series in found)
    seen: Counter[Path] = Counter()
    scans = []
    for series in found:
        first = files[by_file[series.files[0]]]
        folder = series.files[0].parent
        seen[folder] += 1
        suffix = f"_s{seen[folder]}" if per_folder[folder] > 1 else ""
        shown = PurePosixPath(first.path).parent
        stem = f"{shown.name or 'series'}{suffix}"
        parent = first.relative.parent
        relative = parent.with_name(stem) if parent.name else Path(stem)
        scans.append(Scan(series, [by_file[f] for f in series.files], str(shown) + suffix, relative))
    singles = sorted(by_file[file] for file in single if not is_segmentation(read_header(file, limits)))
    return scans, singles, {by_file[file]: reason for file, reason in refused.items()}
