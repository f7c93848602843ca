"""Atomic writes, so that a stage that fails leaves no half-written output behind, with the modes the
user's umask gives (not the private ones of temporary files); output paths checked before any work."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.errors import DataError

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula
_UMASK = os.umask(0)  # read once, at import (setting it back at once): a temp file gets the user's mode
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    make_folders(target.parent)
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
    make_folders(path.parent)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; it replaces `target` only on success."""
    target = Path(target)
    make_folders(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", suffix=f"-{target.name}", dir=target.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes it private too
    try:
        yield tmp
        if target.exists():
            remove_tree(target)
        os.replace(tmp, target)
    finally:
        remove_tree(tmp)


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


def check_output_folder(path: Path, option: str, inputs: Path | None = None) -> None:
    """Refuse an output folder that is a file or could not be written, before the work that fills it;
    or that lies in the folder `inputs`, whose files are read as inputs: the next run over it would
    score the outputs of this one."""
    if path.exists() and not path.is_dir():
        raise DataError(f"{option} {path}: exists and is not a folder")
    if inputs is not None and inputs.is_dir() and path.resolve().is_relative_to(inputs.resolve()):
        raise DataError(
            f"{option} {path}: inside the input folder {inputs}, whose files are all read as inputs "
            "(the next run would score these outputs): choose a folder outside it"
        )
    _check_writable(path, path, option)


def write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def display_name(name: str) -> str:
    """A file name as text any CSV, log or figure can hold: bytes of the name that are not UTF-8 (which
    Python keeps as surrogate escapes, and pandas' text columns refuse) written as `\\xNN`."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def for_spreadsheets(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (beginning with =, +, -, @, a tab or a carriage
    return: a file named `=HYPERLINK(...)`) prefixed with an apostrophe, which spreadsheets show as text
    (OWASP's advice against CSV injection). Numbers stay numbers."""
    escaped = frame.copy()
    text = [name for name, dtype in frame.dtypes.items() if pd.api.types.is_string_dtype(dtype)]
    for column in text:
        escaped[column] = frame[column].map(
            lambda cell: f"'{cell}" if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) else cell
        )
    return escaped


def write_csv(path: Path, frame: pd.DataFrame, *, for_people: bool = False) -> None:
    """`for_people`: a CSV people open in a spreadsheet and the pipeline never reads back (predict's
    scores, rejects, evaluate's tables), its cells `for_spreadsheets`."""
    with atomic_path(path) as tmp:
        (for_spreadsheets(frame) if for_people else frame).to_csv(tmp, index=False, encoding="utf-8")


def make_folders(folder: Path) -> None:
    """`folder` and its missing parents, like `mkdir(parents=True)` without its recursion, which fails on
    a folder nested deeper than Python's recursion limit (a user's data may be)."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)


def remove_tree(folder: Path) -> None:
    """Remove `folder` and all it holds, like `shutil.rmtree` (which recurses once per level before Python
    3.12) without recursion; symbolic links are removed, never followed; what cannot be removed is left."""
    pending, emptied = [Path(folder)], []
    while pending:
        current = pending.pop()
        emptied.append(current)
        with contextlib.suppress(OSError), os.scandir(current) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
    for current in reversed(emptied):
        with contextlib.suppress(OSError):
            current.rmdir()
