"""The raw data's layout: the two classes (their names in manifests, splits and reports, their labels,
their folders), where a slice's lesion mask lies, and the lesion kinds an anomalous slice may be
recorded with. The anomaly class is label 1 (what a detector flags).

Kinds: the manifest and every split CSV carry a text column `kind`, one of `KINDS` for an anomalous
slice whose kind is known and empty otherwise (always empty for healthy slices). A source records the
kinds it knows in `KINDS_FILE` beside the class folders (`add_kinds`: each anomalous file's path below
the raw folder and its kind; the built-in phantom scans, and a labels CSV's optional `kind` column),
and the manifest builder joins it (`read_kinds`)."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Final

HEALTHY, TUMOR = "healthy", "tumor"
CLASSES = (HEALTHY, TUMOR)  # index = label
FOLDERS = {HEALTHY: "Healthy", TUMOR: "Tumor"}  # class -> folder under the raw data
MASKS = "Masks"  # beside the class folders: Masks/<a slice's path below its class folder>.png

EPIDURAL, SUBDURAL, SUBARACHNOID = "epidural", "subdural", "subarachnoid"
INTRAVENTRICULAR, INTRAPARENCHYMAL = "intraventricular", "intraparenchymal"
# What an anomalous slice shows: four haemorrhages by where the blood lies, and a tumor (the kind
# "tumor" is the anomalous class's name too).
KINDS: Final = (EPIDURAL, SUBDURAL, SUBARACHNOID, INTRAVENTRICULAR, INTRAPARENCHYMAL, TUMOR)
KINDS_FILE = "kinds.csv"  # beside the class folders: columns path (below the raw folder), kind


def mask_path(path: str) -> PurePosixPath:
    """Where the lesion mask of the slice at `path` (relative to the raw folder) lies, if it has one."""
    return PurePosixPath(MASKS, *PurePosixPath(path).parts[1:]).with_suffix(".png")


def kind_of(text: str | None) -> str | None:
    """A kind as given (any letter case, spaces around): the kind, '' for none, None if it is no kind."""
    kind = (text or "").strip().lower()
    return kind if kind in KINDS or not kind else None


def add_kinds(raw_dir: Path, kinds: Mapping[str, str]) -> None:
    """Record the kinds of files below `raw_dir` (path relative to it, POSIX separators -> one of
    `KINDS`) in its `KINDS_FILE`, after those recorded before. Paths are written as
    `io.display_name` writes names (a name that is not UTF-8 is renamed so by the manifest builder)."""
    from pipeline.core.io import (
        display_name,  # here: pipeline.core.io imports much that the layout does not need
    )

    if not kinds:
        return
    path = Path(raw_dir) / KINDS_FILE
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["path", "kind"])
        for file, kind in sorted(kinds.items()):
            if kind not in KINDS:
                raise ValueError(f"{file}: unknown kind '{kind}' (kinds: {', '.join(KINDS)})")
            writer.writerow(["/".join(display_name(part) for part in file.split("/")), kind])


def read_kinds(raw_dir: Path) -> dict[str, str]:
    """The kinds recorded below `raw_dir` (`add_kinds`), by path; none if it has no `KINDS_FILE`."""
    path = Path(raw_dir) / KINDS_FILE
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["path"]: row["kind"] for row in csv.DictReader(handle)}
