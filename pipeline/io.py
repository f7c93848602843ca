"""Atomic writes, so that a stage that fails leaves no half-written output behind, with the modes the
user's umask gives (not the private ones of temporary files); output paths checked before any work."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import DataError

_UMASK = os.umask(0)  # read once, at import (setting it back at once): a temp file gets the user's mode
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name ends like the target, for writers that check the extension (Keras).
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{target.name}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_UMASK)  # mkstemp makes it private; the output should not be
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (made if needed) for the block: processes on this
    machine that lock it too wait, so that only one writes an output they share."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; it replaces `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", suffix=f"-{target.name}", dir=target.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes it private too
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_writable(path: Path, folder: Path, option: str) -> None:
    """`path` can be made in `folder`: the nearest of `folder` and its ancestors that exists is a folder
    this process may write in."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DataError(f"{option} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"{option} {path}: cannot write in {folder}")


def check_output_file(path: Path, option: str) -> None:
    """Refuse an output file that could not be written (a folder, or a place that cannot be written)
    before the work that makes it, so that nothing done is lost at the end."""
    if path.is_dir():
        raise DataError(f"{option} {path}: is a folder, not a file")
    _check_writable(path, path.parent, option)


def check_output_folder(path: Path, option: str) -> None:
    """Refuse an output folder that is a file or could not be written, before the work that fills it."""
    if path.exists() and not path.is_dir():
        raise DataError(f"{option} {path}: exists and is not a folder")
    _check_writable(path, path, option)


def write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
