"""Score new slices with a trained detector.

    python -m pipeline.predict PATH [--model MODEL] [--out scores.csv] [--heatmaps DIR] [--maps DIR]

PATH is an image (PNG, JPEG, DICOM, ...), a CT volume (NIfTI: .nii or .nii.gz, scored axial slice by
axial slice), a folder (searched recursively, images and volumes mixed) or a .zip of either. MODEL is a
detector folder, an MLflow model URI (`runs:/<run id>/detector`, `models:/<name>@<alias>`), or by
default the detector of the last `dvc repro`. The CSV has one row per image and one per slice of a
volume (`slice`: its index, inferior to superior): its score, the label (score > threshold), the
threshold and model that made them, or why the file could not be read. `--maps DIR` writes each
input's anomaly map and anomaly mask on the input's own pixel (or voxel) grid.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import hardware
from pipeline import maps as maps_io
from pipeline.config import RuntimeConfig
from pipeline.data.images import to_slice
from pipeline.data.sources import safe_extract
from pipeline.data.volumes import case_name, is_mask, is_volume, read_volume, save_like, to_volume
from pipeline.detector import Detector
from pipeline.errors import DataError, ImageDecodeError, PipelineError
from pipeline.io import write_csv
from pipeline.params import params_section
from pipeline.plots import reconstruction_grid, save_figure
from pipeline.progress import progress
from pipeline.serving import default_model, load_detector

log = logging.getLogger(__name__)
COLUMNS = ["path", "slice", "score", "is_anomaly", "threshold", "model", "run_id", "error"]
CHUNK = 64  # files (or a volume's slices) decoded and scored at a time: memory stays flat on large folders


@dataclass(frozen=True)
class InputFile:
    file: Path  # where to read it
    path: str  # how the CSV names it (inside a zip: archive.zip/inner/path)
    relative: Path  # its place under PATH, which its heat map mirrors


def collect(path: Path, extract_to: Path) -> list[InputFile]:
    """Every file PATH stands for; hidden files (.DS_Store, ...) and lesion-mask volumes (named as in
    the dataset layouts: `<case>_mask.nii.gz`, `masks/...`) are skipped."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and zipfile.is_zipfile(path):
        safe_extract(path, extract_to)
        root, shown = extract_to, path
    elif path.is_file():
        return [InputFile(path, str(path), Path(path.name))]
    else:
        root, shown = path, path
    files = [
        file
        for file in sorted(root.rglob("*"))
        if file.is_file()
        and not any(part.startswith(".") for part in file.relative_to(root).parts)
        and not is_mask(file.relative_to(root))
    ]
    if not files:
        raise DataError(f"{path}: no files to score")
    return [
        InputFile(file, (shown / file.relative_to(root)).as_posix(), file.relative_to(root)) for file in files
    ]


def map_paths(maps: Path, item: InputFile) -> tuple[Path, Path]:
    """Where an input's anomaly map and mask go: its relative path under `maps`, with `.map.png` and
    `.mask.png` added (a volume: `<case>.map.nii.gz` and `<case>.mask.nii.gz` beside its folder's)."""
    if is_volume(item.file):
        folder, case = maps / item.relative.parent, case_name(item.relative)
        return folder / f"{case}.map.nii.gz", folder / f"{case}.mask.nii.gz"
    folder, name = maps / item.relative.parent, item.relative.name
    return folder / f"{name}.map.png", folder / f"{name}.mask.png"


def _heatmap(heatmaps: Path, item: InputFile, arrays: tuple[np.ndarray, ...], label: str) -> None:
    """One input's figure: `arrays` are its (1, ...) image, reconstruction and residual map."""
    figure = reconstruction_grid(*arrays, [label])
    save_figure(figure, heatmaps / item.relative.with_name(f"{item.relative.name}.png"))


def _score_files(
    detector: Detector, files: list[InputFile], orders: list[int], heatmaps: Path | None, maps: Path | None
) -> list[dict]:
    """Score the 2-D files at `orders` (their places in `files`) as one batch."""
    chunk = [files[order] for order in orders]
    rows = []
    batch = detector.decode([item.file for item in chunk], [item.path for item in chunk])
    reconstructions, scores = detector.reconstruct_and_score(batch.images)
    for index, score in zip(batch.decoded, scores, strict=True):
        rows.append(
            {
                "order": orders[index],
                "path": chunk[index].path,
                "score": float(score),
                "is_anomaly": bool(detector.is_anomaly(score)),
            }
        )
    for index, reason in batch.errors.items():
        rows.append({"order": orders[index], "path": chunk[index].path, "error": reason})
    if heatmaps is None and maps is None:
        return rows
    residuals = detector.residual_maps(batch.images, reconstructions)
    for row, index in enumerate(batch.decoded):
        item, score, one = chunk[index], scores[row], slice(row, row + 1)
        if heatmaps is not None:
            arrays = (batch.images[one], reconstructions[one], residuals[one])
            _heatmap(heatmaps, item, arrays, f"{item.relative.name}\nscore {score:.3g}")
        if maps is not None:
            anomaly_map = to_slice(residuals[row], batch.geometries[row])
            maps_io.write_pngs(anomaly_map, detector.anomaly_mask(anomaly_map), map_paths(maps, item))
    return rows


def _score_volume(
    detector: Detector, item: InputFile, order: int, heatmaps: Path | None, maps: Path | None
) -> list[dict]:
    """Score every axial slice of a NIfTI volume, one row each; the volume's score is the highest."""
    try:
        volume = read_volume(item.file)
    except ImageDecodeError as err:
        return [{"order": order, "path": item.path, "error": err.reason}]
    rows = []
    volume_maps = np.zeros(volume.slices.shape, dtype=np.float32) if maps is not None else None
    best: tuple[float, int, tuple[np.ndarray, ...]] | None = None  # the top slice, for --heatmaps
    for start in range(0, len(volume.slices), CHUNK):
        batch = detector.prepare_hounsfield(volume.slices[start : start + CHUNK])
        reconstructions, scores = detector.reconstruct_and_score(batch.images)
        for index, score in zip(batch.decoded, scores, strict=True):
            rows.append(
                {
                    "order": order,
                    "path": item.path,
                    "slice": start + int(index),
                    "score": float(score),
                    "is_anomaly": bool(detector.is_anomaly(score)),
                }
            )
        for index, reason in batch.errors.items():
            rows.append({"order": order, "path": item.path, "slice": start + int(index), "error": reason})
        if heatmaps is None and maps is None:
            continue
        residuals = detector.residual_maps(batch.images, reconstructions)
        if volume_maps is not None:
            for row, index in enumerate(batch.decoded):
                volume_maps[start + index] = to_slice(residuals[row], batch.geometries[row])
        if heatmaps is not None and len(scores):
            top = int(np.argmax(scores))
            if best is None or scores[top] > best[0]:
                one = slice(top, top + 1)
                arrays = (batch.images[one], reconstructions[one], residuals[one])
                best = (float(scores[top]), start + int(batch.decoded[top]), arrays)
    scored = [row for row in rows if "score" in row]
    if scored:
        top = max(scored, key=lambda row: row["score"])
        log.info(
            "%s: volume score %.6g (the highest of its %d slices, at slice %d)%s",
            item.path,
            top["score"],
            len(scored),
            top["slice"],
            ", anomalous" if top["is_anomaly"] else "",
        )
    if heatmaps is not None and best is not None:  # the volume's figure: its highest-scoring slice
        _heatmap(heatmaps, item, best[2], f"{item.relative.name} slice {best[1]}\nscore {best[0]:.3g}")
    if volume_maps is not None:
        map_path, mask_path = map_paths(maps, item)
        save_like(to_volume(volume_maps, volume).astype(np.float32), volume, map_path)
        mask = to_volume(detector.anomaly_mask(volume_maps), volume).astype(np.uint8)
        save_like(mask, volume, mask_path)
    return rows


def predict(
    detector: Detector,
    files: list[InputFile],
    model: str,
    heatmaps: Path | None = None,
    maps: Path | None = None,
) -> pd.DataFrame:
    """Score every file (every slice of a volume); unreadable ones get a row with the reason instead of a
    score. `maps`: a folder for each input's anomaly map and mask on its own pixel grid."""
    if maps is not None:
        maps_io.check_folder(maps)
        maps_io.check_detector(detector)
    rows = []
    images = [order for order, item in enumerate(files) if not is_volume(item.file)]
    volumes = [order for order, item in enumerate(files) if is_volume(item.file)]
    # a job: up to CHUNK images scored as one batch, or one volume (its slices scored CHUNK at a time)
    jobs = [images[start : start + CHUNK] for start in range(0, len(images), CHUNK)] + [[v] for v in volumes]
    for job in progress(jobs, desc="predict", unit="batch"):
        if is_volume(files[job[0]].file):
            rows.extend(_score_volume(detector, files[job[0]], job[0], heatmaps, maps))
        else:
            rows.extend(_score_files(detector, files, job, heatmaps, maps))
    frame = pd.DataFrame(rows, columns=["order", *COLUMNS]).assign(
        threshold=detector.threshold, model=model, run_id=detector.info.get("run_id", "")
    )
    frame["slice"] = frame["slice"].astype("Int64")
    frame = frame.sort_values(["order", "slice"], na_position="first", kind="stable", ignore_index=True)
    return frame[COLUMNS]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path",
        type=Path,
        help="an image file, a NIfTI volume (.nii, .nii.gz), a folder (searched recursively) or a .zip",
    )
    parser.add_argument(
        "--model",
        help=f"detector folder or MLflow model URI (default: {default_model()}, the last `dvc repro`)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("scores.csv"), help="CSV to write (default: %(default)s)"
    )
    parser.add_argument("--heatmaps", type=Path, help="folder for input / reconstruction / residual figures")
    parser.add_argument(
        "--maps",
        type=Path,
        help="folder for each input's anomaly map and mask on its own pixel grid: <path>.map.png "
        "(16-bit, residual * 65535) and <path>.mask.png (255 = anomalous); a volume's "
        "<case>.map.nii.gz (float32) and <case>.mask.nii.gz (uint8) with its affine",
    )
    return parser.parse_args(argv)


def summary(scores: pd.DataFrame, threshold: float) -> str:
    """What was scored, per file (a volume is flagged when any of its slices is)."""
    ok = scores[scores["error"].isna()]
    per_file = ok.groupby("path", sort=False)["is_anomaly"].agg(lambda flags: bool(flags.eq(True).any()))
    volumes = ok[ok["slice"].notna()]
    text = (
        f"{len(per_file)} files scored, {int(per_file.sum())} flagged as anomalous (threshold "
        f"{threshold:.6g}), {int(scores['error'].notna().sum())} unreadable"
    )
    if len(volumes):
        text += (
            f"; the {volumes['path'].nunique()} volume(s) among them: {len(volumes)} slices, "
            f"{int(volumes['is_anomaly'].eq(True).sum())} flagged"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        if args.maps is not None:
            maps_io.check_folder(args.maps)
        hardware.configure(params_section("runtime", RuntimeConfig).threads)
        model = args.model or str(default_model())
        detector = load_detector(model)
        if args.maps is not None:
            maps_io.check_detector(detector)
        with tempfile.TemporaryDirectory(prefix="predict-") as extracted:
            files = collect(args.path, Path(extracted))
            scores = predict(detector, files, model, args.heatmaps, args.maps)
        write_csv(args.out, scores)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    failed = scores["error"].notna()
    for row in scores[failed].itertuples():
        where = "" if pd.isna(row.slice) else f" slice {row.slice}"
        print(f"warning: {row.path}{where}: {row.error}", file=sys.stderr)
    log.info("%s: %s", args.out, summary(scores, detector.threshold))
    if failed.all():
        print(
            f"error: none of the {len(scores)} files under {args.path} could be read as an image",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
