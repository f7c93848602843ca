"""What stops an input before it costs memory or earns a meaningless score, with a reason a user can act
on: too many pixels (read from the header, before any pixel is decoded), bytes of another type than the
file's name says, a slice with nothing to score, and what a folder holds that cannot be read at all.

Each check raises ImageDecodeError naming the file: a training file becomes a reject, a file given to
predict a row with that error, a row sent to the served model a client error (HTTP 400).
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from pipeline.core.config import MAX_PIXELS, MAX_VOXELS, PreprocessConfig
from pipeline.core.errors import ImageDecodeError
from pipeline.data.head import head_mask

MIN_SIDE = 16  # pixels on either side, as the smallest model input: a narrower slice holds no head
# The head region's least share of a slice: a speck or a few bright pixels are not a head (the real 2-D
# slices' heads cover 20% or more, the built-in scans' 15% or more; a scan's top slice, a few percent)
MIN_HEAD_SHARE = 0.01
HEAD_BYTES = 512  # how much of a file `file_type` reads
IMAGE_TYPES = ("PNG", "JPEG", "GIF", "TIFF", "WebP")
_SIGNATURES = (  # (offset, bytes, type) of the formats a user is likely to put among CT slices
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"GIF8", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WebP"),
    (128, b"DICM", "DICOM"),
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"%PDF", "PDF"),
)


@dataclass(frozen=True)
class Limits:
    """What a file may declare in its header before any of its pixels are read (`preprocess.max_pixels`
    per slice, `preprocess.max_voxels` per volume)."""

    max_pixels: int = MAX_PIXELS
    max_voxels: int = MAX_VOXELS

    @classmethod
    def of(cls, preprocess: PreprocessConfig) -> Limits:
        return cls(preprocess.max_pixels, preprocess.max_voxels)


DEFAULT_LIMITS = Limits()


def check_pixels(name: str | Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse a slice whose header declares more than `max_pixels` pixels: a few kilobytes of one
    colour can decode to gigabytes."""
    if width * height > max_pixels:
        raise ImageDecodeError(name, f"{width}x{height} pixels is above preprocess.max_pixels ({max_pixels})")


def check_finite(name: str | Path, values: np.ndarray, what: str = "pixel") -> None:
    """Refuse values that are NaN or infinite: a window or a stretch would turn them into plausible
    grey levels, and the slice would be scored as if it had been read."""
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ImageDecodeError(name, f"non-finite {what} values ({bad} NaN or infinite)")


def check_content(name: str | Path, gray: np.ndarray, threshold: float) -> np.ndarray:
    """Refuse a decoded slice the model cannot score meaningfully: too small to hold a head, with
    non-finite values, or with no head-sized region above the head threshold (blank, uniform, a few
    bright specks). Such a slice would get a score like any other and be flagged without a word.
    Returns the head mask found (`head.head_mask`), for preprocessing to reuse."""
    height, width = gray.shape
    if min(height, width) < MIN_SIDE:
        raise ImageDecodeError(
            name, f"too small: {width}x{height} pixels (a slice needs at least {MIN_SIDE} on each side)"
        )
    check_finite(name, gray)
    low, high = float(gray.min()), float(gray.max())
    if low == high:
        raise ImageDecodeError(name, f"no head found: every pixel has the value {low:.3g}")
    if high <= threshold:
        raise ImageDecodeError(
            name, f"no head found: no pixel is above preprocess.head.threshold ({threshold:g})"
        )
    mask = head_mask(gray, threshold)
    area = int(np.count_nonzero(mask))
    if not area or area < MIN_HEAD_SHARE * gray.size:
        raise ImageDecodeError(
            name,
            f"no head found: the largest region above preprocess.head.threshold ({threshold:g}) covers "
            f"{area} pixels once specks are removed, {area / gray.size:.2%} of the slice (a head covers at "
            f"least {MIN_HEAD_SHARE:.0%})",
        )
    return mask


def file_type(head: bytes) -> str | None:
    """What a file's first bytes (`HEAD_BYTES` of them) say it is: "PNG", "DICOM", "zip", "text", ...;
    None when they match nothing known."""
    for offset, signature, kind in _SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return kind
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start < len(head) - 3:  # not merely a character cut at the end of `head`
                return None
        return "text"
    return None


def not_an_image(head: bytes, file: IO[bytes]) -> str:
    """Why a file PIL cannot identify is not scored, by what its first bytes say it is."""
    kind = file_type(head)
    if kind == "zip":
        return (
            "a zip archive, not an image: extract it"
            if zipfile.is_zipfile(file)
            else "truncated or corrupt zip"
        )
    if kind is None:
        return "not an image file PIL can identify"
    if kind in IMAGE_TYPES:
        return f"cannot decode: a {kind} file with a corrupt header"
    return f"not an image: a {kind} file"


Problem = tuple[Path, str]  # what cannot be listed or read at all, and why
NAME_MAX = 255  # bytes in one file or folder name, on the common file systems
PATH_MAX = 4096  # bytes in a whole path, with its terminating NUL (Linux)


def walk(
    folder: Path, within: Path | None = None
) -> Iterator[tuple[Path, list[Path], list[Path], list[Problem]]]:
    """Each folder below `folder` (itself first) with its subfolders, its files and its problems, sorted,
    like os.walk but without recursion: a folder nested deeper than Python's recursion limit is walked
    like any other. Symbolic links to folders are not followed, and a link to a file only when its target
    lies inside `within` (`folder` unless given: the root the user named), so that nothing outside it is
    read. Nothing is opened: a pipe would block."""
    inside = (within or folder).resolve()
    pending = [folder]
    while pending:
        current = pending.pop()
        subfolders: list[Path] = []
        files: list[Path] = []
        problems: list[Problem] = []
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    path = Path(entry.path)
                    if entry.is_symlink():
                        reason = _link_problem(path, inside, within or folder)
                        if reason:
                            problems.append((path, reason))
                        else:
                            files.append(path)
                    elif entry.is_dir(follow_symlinks=False):
                        subfolders.append(path)
                    elif entry.is_file(follow_symlinks=False):
                        files.append(path)
                    else:
                        problems.append((path, "not a regular file (a pipe, socket or device)"))
        except OSError as err:
            problems.append((current, f"unreadable folder ({err.strerror})"))
        subfolders.sort()
        yield current, subfolders, sorted(files), sorted(problems)
        pending += reversed(subfolders)


def _link_problem(link: Path, inside: Path, root: Path) -> str | None:
    """Why the symbolic link is not followed (its target resolved, `inside` being `root` resolved), or
    None for a link to a regular file inside the root."""
    try:
        target = link.resolve(strict=True)
        mode = target.stat().st_mode
    except (OSError, RuntimeError):  # RuntimeError: a loop of links, before Python 3.13
        return f"a dangling symbolic link (to {os.readlink(link)})"
    if stat.S_ISDIR(mode):
        return "a symbolic link to a folder: not followed"
    if not target.is_relative_to(inside):
        return f"a symbolic link to outside {root}: not followed"
    if not stat.S_ISREG(mode):
        return "not a regular file (a pipe, socket or device)"
    return None


def list_files(root: Path, within: Path | None = None) -> tuple[list[Path], list[Problem]]:
    """Every file below `root` (`walk`: links followed only to files inside `within`, default `root`),
    sorted, and what cannot be listed or read at all, with the reason: an unreadable folder, a dangling
    symbolic link, a link to a folder or to outside the root, a pipe."""
    files: list[Path] = []
    problems: list[Problem] = []
    for _, _, found, trouble in walk(root, within):
        files += found
        problems += trouble
    return sorted(files), sorted(problems)
