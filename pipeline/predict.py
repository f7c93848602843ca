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
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import hardware
from pipeline import maps as maps_io
from pipeline.config import ArchiveLimits, RuntimeConfig
from pipeline.data.guards import Limits
from pipeline.data.images import to_slice
from pipeline.data.series import write_segmentation
from pipeline.data.volumes import case_name, is_volume, read_volume, save_nifti, to_volume
from pipeline.detector import Detector
from pipeline.errors import ImageDecodeError, PipelineError
from pipeline.inputs import InputFile, Scan, collect, find_scans
from pipeline.io import check_output_file, check_output_folder, write_csv
from pipeline.params import params_section
from pipeline.plots import reconstruction_grid, save_figure
from pipeline.progress import progress
from pipeline.serving import default_model, load_detector

log = logging.getLogger(__name__)
COLUMNS = ["path", "scan", "slice", "score", "is_anomaly", "threshold", "model", "run_id", "error"]
SOFTWARE = version("brain-ct-anomaly")  # what made a DICOM-SEG, in its header
CHUNK = 64  # files (or a volume's slices) decoded and scored at a time: memory stays flat on large folders


def map_paths(maps: Path, item: InputFile | Scan) -> tuple[Path, Path]:
    """Where an input's anomaly map and mask go: its relative path under `maps`, with `.map.png` and
    `.mask.png` added; a NIfTI volume's `<case>.map.nii.gz` and `<case>.mask.nii.gz` beside its
    folder's; a DICOM series' `<folder>.map.nii.gz`, `<folder>.mask.nii.gz` (and `<folder>.seg.dcm`)."""
    if isinstance(item, Scan):
        folder, case = maps / item.relative.parent, item.relative.name
    elif is_volume(item.file):
        folder, case = maps / item.relative.parent, case_name(item.relative)
    else:
        folder, name = maps / item.relative.parent, item.relative.name
        return folder / f"{name}.map.png", folder / f"{name}.mask.png"
    return folder / f"{case}.map.nii.gz", folder / f"{case}.mask.nii.gz"


def _heatmap(heatmaps: Path, item: InputFile, arrays: tuple[np.ndarray, ...], label: str) -> None:
    """One input's figure: `arrays` are its (1, ...) image, reconstruction and residual map."""
    figure = reconstruction_grid(*arrays, [label])
    save_figure(figure, heatmaps / item.relative.with_name(f"{item.relative.name}.png"))


def _score_files(
    detector: Detector, files: list[InputFile], orders: list[int], heatmaps: Path | None, with_maps: bool
) -> tuple[list[dict], dict[int, np.ndarray]]:
    """Score the 2-D files at `orders` (their places in `files`) as one batch; with `with_maps`, also
    return each decoded file's anomaly map on its own pixel grid, by order."""
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
    slice_maps: dict[int, np.ndarray] = {}
    if (heatmaps is None and not with_maps) or not len(batch.decoded):
        return rows, slice_maps
    residuals = detector.residual_maps(batch.images, reconstructions)
    for row, index in enumerate(batch.decoded):
        item, score, one = chunk[index], scores[row], slice(row, row + 1)
        if heatmaps is not None:
            arrays = (batch.images[one], reconstructions[one], residuals[one])
            _heatmap(heatmaps, item, arrays, f"{item.relative.name}\nscore {score:.3g}")
        if with_maps:
            slice_maps[orders[index]] = to_slice(residuals[row], batch.geometries[row])
    return rows, slice_maps


def _score_images(
    detector: Detector, files: list[InputFile], orders: list[int], heatmaps: Path | None, maps: Path | None
) -> list[dict]:
    """Score 2-D files as one batch; each gets its map and mask PNGs under `maps`."""
    rows, slice_maps = _score_files(detector, files, orders, heatmaps, maps is not None)
    for order, anomaly_map in slice_maps.items():
        maps_io.write_pngs(anomaly_map, detector.anomaly_mask(anomaly_map), map_paths(maps, files[order]))
    return rows


def _log_scan_score(name: str, rows: list[dict]) -> None:
    scored = [row for row in rows if "score" in row]
    if scored:
        top = max(scored, key=lambda row: row["score"])
        log.info(
            "%s: scan score %.6g (the highest of its %d slices, at slice %d)%s",
            name,
            top["score"],
            len(scored),
            top["slice"],
            ", anomalous" if top["is_anomaly"] else "",
        )


def _score_series(
    detector: Detector, files: list[InputFile], scan: Scan, heatmaps: Path | None, maps: Path | None
) -> list[dict]:
    """Score a DICOM series' slices (one row per file, numbered by position); under `maps`, its map and
    mask as NIfTI with the series' affine and its mask as a DICOM-SEG referencing the series."""
    columns, rows_, count = scan.series.shape
    stack = np.zeros((count, rows_, columns), dtype=np.float32) if maps is not None else None
    place = {order: index for index, order in enumerate(scan.orders)}
    rows = []
    for start in range(0, count, CHUNK):
        part, slice_maps = _score_files(
            detector, files, scan.orders[start : start + CHUNK], heatmaps, stack is not None
        )
        rows.extend(part)
        for order, anomaly_map in slice_maps.items():
            stack[place[order]] = anomaly_map
    for row in rows:
        row.update(scan=scan.name, slice=place[row["order"]])
    _log_scan_score(scan.name, rows)
    if stack is not None:
        map_path, mask_path = map_paths(maps, scan)
        mask = detector.anomaly_mask(stack)
        write_segmentation(scan.series, mask, mask_path.with_name(f"{scan.relative.name}.seg.dcm"), SOFTWARE)
        if scan.series.regular:
            save_nifti(scan.series.to_voxels(stack), scan.series.affine, map_path)
            save_nifti(scan.series.to_voxels(mask).astype(np.uint8), scan.series.affine, mask_path)
        else:
            log.warning(
                "%s: its slices are unevenly spaced (a missing slice?): no NIfTI map, whose grid must be "
                "regular; the DICOM-SEG, which references each slice, is written",
                scan.name,
            )
    return rows


def _score_volume(
    detector: Detector, item: InputFile, order: int, heatmaps: Path | None, maps: Path | None
) -> list[dict]:
    """Score every axial slice of a NIfTI volume, one row each; the volume's score is the highest."""
    try:
        volume = read_volume(item.file, Limits.of(detector.preprocess))
    except ImageDecodeError as err:
        return [{"order": order, "path": item.path, "scan": item.path, "error": err.reason}]
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
                    "scan": item.path,
                    "slice": start + int(index),
                    "score": float(score),
                    "is_anomaly": bool(detector.is_anomaly(score)),
                }
            )
        for index, reason in batch.errors.items():
            rows.append(
                {
                    "order": order,
                    "path": item.path,
                    "scan": item.path,
                    "slice": start + int(index),
                    "error": reason,
                }
            )
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
    _log_scan_score(item.path, rows)
    if heatmaps is not None and best is not None:  # the volume's figure: its highest-scoring slice
        _heatmap(heatmaps, item, best[2], f"{item.relative.name} slice {best[1]}\nscore {best[0]:.3g}")
    if volume_maps is not None:
        map_path, mask_path = map_paths(maps, item)
        save_nifti(to_volume(volume_maps, volume).astype(np.float32), volume.affine, map_path)
        mask = to_volume(detector.anomaly_mask(volume_maps), volume).astype(np.uint8)
        save_nifti(mask, volume.affine, mask_path)
    return rows


def predict(
    detector: Detector,
    files: list[InputFile],
    model: str,
    heatmaps: Path | None = None,
    maps: Path | None = None,
) -> pd.DataFrame:
    """Score every file (every slice of a volume); one that cannot be read or holds nothing to score
    (`pipeline.data.guards`) gets a row with the reason instead of a score. `maps`: a folder for each
    input's anomaly map and mask on its own pixel grid."""
    if maps is not None:
        check_output_folder(maps, "--maps")
        maps_io.check_detector(detector)
    readable = [order for order, item in enumerate(files) if not item.error]
    volumes = [order for order in readable if is_volume(files[order].file)]
    scans, images = find_scans(files, [order for order in readable if not is_volume(files[order].file)])
    # a job: up to CHUNK images scored as one batch, a volume or a series (their slices CHUNK at a time)
    jobs: list[Callable[[], list[dict]]] = [
        partial(_score_images, detector, files, images[start : start + CHUNK], heatmaps, maps)
        for start in range(0, len(images), CHUNK)
    ]
    jobs += [partial(_score_volume, detector, files[order], order, heatmaps, maps) for order in volumes]
    jobs += [partial(_score_series, detector, files, scan, heatmaps, maps) for scan in scans]
    rows = [
        {"order": order, "path": item.path, "error": item.error}
        for order, item in enumerate(files)
        if item.error
    ]
    rows += [row for job in progress(jobs, desc="predict", unit="batch") for row in job()]
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
    """What was scored, per input: an image, or a scan (a volume or a DICOM series, flagged when any of
    its slices is)."""
    ok = scores[scores["error"].isna()]
    inputs = ok.assign(input=ok["scan"].fillna(ok["path"]))
    per_input = inputs.groupby("input", sort=False)["is_anomaly"].agg(
        lambda flags: bool(flags.eq(True).any())
    )
    in_scans = ok[ok["scan"].notna()]
    text = (
        f"{len(per_input)} inputs scored, {int(per_input.sum())} flagged as anomalous (threshold "
        f"{threshold:.6g}), {int(scores['error'].notna().sum())} not scored (their reasons above)"
    )
    if len(in_scans):
        text += (
            f"; the {in_scans['scan'].nunique()} scan(s) among them: {len(in_scans)} slices, "
            f"{int(in_scans['is_anomaly'].eq(True).sum())} flagged"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        check_output_file(args.out, "--out")  # every output checked first: no scoring lost at the end
        for option, folder in (("--heatmaps", args.heatmaps), ("--maps", args.maps)):
            if folder is not None:
                check_output_folder(folder, option)
        hardware.configure(params_section("runtime", RuntimeConfig).threads)
        model = args.model or str(default_model())
        detector = load_detector(model)
        if args.maps is not None:
            maps_io.check_detector(detector)
        with tempfile.TemporaryDirectory(prefix="predict-") as extracted:
            files = collect(args.path, Path(extracted), params_section("archive", ArchiveLimits))
            scores = predict(detector, files, model, args.heatmaps, args.maps)
        write_csv(args.out, scores)
    except (PipelineError, OSError) as err:  # OSError: a file or folder this account cannot read or write
        print(f"error: {err}", file=sys.stderr)
        return 1
    failed = scores["error"].notna()
    for row in scores[failed].itertuples():
        where = "" if pd.isna(row.slice) else f" slice {row.slice}"
        print(f"warning: {row.path}{where}: {row.error}", file=sys.stderr)
    log.info("%s: %s", args.out, summary(scores, detector.threshold))
    if failed.all():
        print(
            f"error: none of the {len(scores)} files under {args.path} could be scored",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
