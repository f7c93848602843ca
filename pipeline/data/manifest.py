"""The manifest: one row per usable raw image (class, content hash, perceptual hash, size, mode,
format; for CT slices of a scan also its patient, its scan (series), and its place in the scan; the
lesion kind where the source recorded one) and a rejects list (file and reason) for everything that
cannot be decoded. The splits keep every manifest column."""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.config import PreprocessConfig
from pipeline.core.errors import ImageDecodeError
from pipeline.core.io import display_name
from pipeline.core.progress import progress as progress_bar
from pipeline.data.classes import FOLDERS, TUMOR, read_kinds
from pipeline.data.dicom import DICOM_FORMAT, identity
from pipeline.data.guards import Limits, list_files, walk
from pipeline.data.images import DECODE_WORKERS, decode

log = logging.getLogger(__name__)
MANIFEST_COLUMNS = ["path", "class", "sha256", "phash", "width", "height", "mode", "format"]
# Of a slice of a scan (empty for a lone image): its patient, its scan, and its place in the scan
# (slice = rank from the feet up, slices = the scan's slice count; level = slice / (slices - 1)).
SCAN_COLUMNS = ["patient", "series", "slice", "slices"]
# What an anomalous slice shows, where the source knows (`classes.KINDS`); empty for healthy slices and
# where unknown. The source records it in the raw folder's `classes.KINDS_FILE`.
KIND_COLUMN = "kind"
REJECT_COLUMNS = ["path", "class", "reason"]


def scan_levels(index: np.ndarray | pd.Series, count: np.ndarray | pd.Series | int) -> np.ndarray:
    """Each slice's level, slice / (slices - 1): 0 lowest .. 1 highest in its scan; NaN for a lone image
    or a scan of one slice. What the level-aware reference and the level diagnostics read."""
    index = np.asarray(index, dtype=float)
    count = np.asarray(count, dtype=float)
    return np.where(count > 1, index / np.maximum(count - 1, 1), np.nan)


def frame_levels(frame: pd.DataFrame) -> np.ndarray:
    """`scan_levels` of a manifest's rows (NaN where a row has no place in a scan)."""
    if not {"slice", "slices"} <= set(frame.columns):
        return np.full(len(frame), np.nan)
    return scan_levels(
        pd.to_numeric(frame["slice"], errors="coerce"), pd.to_numeric(frame["slices"], errors="coerce")
    )


def inspect(raw_dir: Path, path: Path, class_name: str, config: PreprocessConfig) -> dict[str, str | int]:
    """One manifest row (path relative to raw_dir, POSIX separators); raises ImageDecodeError for
    anything that is not a usable image (`images.decode`). The perceptual hash is of the slice as the
    model sees it (a DICOM through `config.dicom_window`)."""
    decoded = decode(path, config)
    perceptual = imagehash.phash(Image.fromarray(np.round(decoded.pixels * 255).astype(np.uint8)))
    scan = (
        identity(path, Limits.of(config))
        if decoded.format == DICOM_FORMAT
        else {"patient": "", "series": "", "position": np.nan}
    )
    return {
        **scan,
        "path": path.relative_to(raw_dir).as_posix(),
        "class": class_name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "phash": str(perceptual),
        "width": decoded.width,
        "height": decoded.height,
        "mode": decoded.mode,
        "format": decoded.format,
    }


def _place_in_scan(entries: pd.DataFrame) -> pd.DataFrame:
    """Each scan's slices numbered by position from the feet up, in steps of the scan's usual slice
    spacing, so that a missing slice leaves a gap in the numbers instead of shifting every slice above
    it; `slices` spans the whole scan. Scans with gaps are logged."""
    entries["slice"] = entries["slices"] = pd.NA
    for series, scan in entries[entries["series"] != ""].groupby("series"):
        index = slice_numbers(scan["position"].to_numpy(dtype=float))
        entries.loc[scan.index, "slice"], entries.loc[scan.index, "slices"] = index, index.max() + 1
        if index.max() + 1 > len(scan):
            log.warning(
                "scan %s (%s): %d of its %d slice positions hold no slice (missing files?)",
                series,
                scan["patient"].iloc[0],
                index.max() + 1 - len(scan),
                index.max() + 1,
            )
    entries[["slice", "slices"]] = entries[["slice", "slices"]].astype("Int64")
    return entries.drop(columns="position")


def slice_numbers(position: np.ndarray) -> np.ndarray:
    """A scan's slices numbered by `position` from the feet up, in steps of its usual slice spacing (a
    missing slice leaves a gap); by rank where positions are missing or two share a number. Predict
    numbers a DICOM series' slices so too, so a slice has the same neighbours there as in a split."""
    rank = np.argsort(np.argsort(np.nan_to_num(position, nan=np.inf), kind="stable"), kind="stable")
    if np.isnan(position).any():  # no usable positions
        return rank
    steps = np.diff(np.sort(position))
    spacing = float(np.median(steps)) if len(steps) and np.median(steps) > 0 else 1.0
    index = np.rint((position - position.min()) / spacing).astype(int)
    return rank if len(np.unique(index)) < len(index) else index


def portable_names(raw_dir: Path) -> None:
    """Rename what below `raw_dir` has a name that is not UTF-8 to its `io.display_name` (each such byte
    as `\\xNN`): manifests, DVC and MLflow hold paths as UTF-8 text, and a copy's name need not be the
    original's byte for byte. A name taken already gets `~2`, `~3`, ... before its suffix."""
    folders = [(folder, [*subfolders, *files]) for folder, subfolders, files, _ in walk(raw_dir)]
    for folder, entries in reversed(folders):  # the deepest first: a renamed folder's children are done
        for entry in entries:
            name = display_name(entry.name)
            if name == entry.name:
                continue
            target, copy = folder / name, 1
            while target.exists():
                copy += 1
                target = folder / f"{Path(name).stem}~{copy}{Path(name).suffix}"
            entry.rename(target)


def build_manifest(
    raw_dir: Path, config: PreprocessConfig, unusable: list[tuple[str, str]] = (), *, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Inspect every file under raw_dir/{Healthy,Tumor}; return (manifest, rejects), sorted by path.
    `unusable` (file, reason) are what the source could not bring in at all (a volume without labels)."""
    jobs = [(path, name) for name, folder in FOLDERS.items() for path in list_files(raw_dir / folder)[0]]
    entries: list[dict] = []
    rejects: list[dict] = []

    def run(job: tuple[Path, str]) -> None:
        path, name = job
        try:
            entries.append(inspect(raw_dir, path, name, config))
        except ImageDecodeError as err:
            rejects.append(
                {"path": path.relative_to(raw_dir).as_posix(), "class": name, "reason": err.reason}
            )

    with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as pool:
        for _ in progress_bar(
            pool.map(run, jobs), desc="inspect", unit="file", total=len(jobs), enabled=progress
        ):
            pass
    rejects += [{"path": display_name(path), "class": "", "reason": reason} for path, reason in unusable]
    found = pd.DataFrame(entries, columns=[*MANIFEST_COLUMNS, "patient", "series", "position"])
    kinds = read_kinds(raw_dir)
    found[KIND_COLUMN] = [
        kinds.get(path, "") if cls == TUMOR else ""
        for path, cls in zip(found["path"], found["class"], strict=True)
    ]
    columns = MANIFEST_COLUMNS + SCAN_COLUMNS + [KIND_COLUMN]
    manifest = _place_in_scan(found)[columns].sort_values("path", ignore_index=True)
    rejected = pd.DataFrame(rejects, columns=REJECT_COLUMNS).sort_values("path", ignore_index=True)
    return manifest, rejected


def read_manifest(path: Path) -> pd.DataFrame:
    """A manifest or split CSV; `kind` is text, '' where none (a file written before the column existed
    gets it empty)."""
    # phash and sha256 are hex strings that may look numeric: keep them as text.
    text = {"sha256": str, "phash": str, "path": str, "class": str, "patient": str, "series": str}
    frame = pd.read_csv(
        path,
        dtype=text | {"slice": "Int64", "slices": "Int64", KIND_COLUMN: str},
        keep_default_na=False,
        na_values={"slice": [""], "slices": [""]},
    )
    if KIND_COLUMN not in frame.columns:
        frame[KIND_COLUMN] = ""
    return frame


def content_hash(manifest: pd.DataFrame, by: str = "class") -> str:
    """A short hash of which images (by content) are in which class (or split): the data's identity."""
    rows = sorted(f"{c}:{h}" for c, h in zip(manifest[by], manifest["sha256"], strict=True))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
