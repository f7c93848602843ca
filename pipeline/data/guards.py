"""What stops an input before it costs memory or earns a meaningless score, with a reason a user can act
on: too many pixels (read from the header, before any pixel is decoded), bytes of another type than the
file's name says, a slice with nothing to score, and what a folder holds that cannot be read at all.

Each check raises ImageDecodeError naming the file: a training file becomes a reject, a file given to
predict a row with that error, a row sent to the served model a client error (HTTP 400).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from pipeline.config import MAX_PIXELS, MAX_VOXELS, PreprocessConfig
from pipeline.errors import ImageDecodeError

MIN_SIDE = 16  # pixels on either side, as the smallest model input: a narrower slice holds no head
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


def check_content(name: str | Path, gray: np.ndarray, threshold: float) -> None:
    """Refuse a decoded slice the model cannot score meaningfully: too small to hold a head, with
    non-finite values, or with no pixel above the head threshold (blank, uniform). Such a slice would
    get a score like any other and be flagged without a word."""
    height, width = gray.shape
    if min(height, width) < MIN_SIDE:
        raise ImageDecodeError(
            name, f"too small: {width}x{height} pixels (a slice needs at least {MIN_SIDE} on each side)"
        )
    bad = int(np.count_nonzero(~np.isfinite(gray)))
    if bad:
        raise ImageDecodeError(name, f"non-finite pixel values ({bad} NaN or infinite)")
    low, high = float(gray.min()), float(gray.max())
    if low == high:
        raise ImageDecodeError(name, f"no head found: every pixel has the value {low:.3g}")
    if high <= threshold:
        raise ImageDecodeError(
            name, f"no head found: no pixel is above preprocess.head.threshold ({threshold:g})"
        )


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


def list_files(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every file below `root` (symbolic links to folders are not followed), sorted, and what cannot be
    listed or read at all, with the reason: an unreadable folder, a dangling symbolic link, a link to a
    folder."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []

    def unreadable(err: OSError) -> None:
        problems.append((Path(err.filename), f"unreadable folder ({err.strerror})"))

    for folder, folders, names in os.walk(root, onerror=unreadable):
        for name in folders:
            if Path(folder, name).is_symlink():
                problems.append((Path(folder, name), "a symbolic link to a folder: not followed"))
        for name in names:
            path = Path(folder, name)
            if path.is_file():
                files.append(path)
            elif path.is_symlink() and not path.exists():
                problems.append((path, f"a dangling symbolic link (to {os.readlink(path)})"))
            else:
                problems.append((path, "not a regular file (a pipe, socket or device)"))
    return sorted(files), sorted(problems)
