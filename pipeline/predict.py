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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import hardware
from pipeline import maps as maps_io
from pipeline.config import ArchiveLimits, RuntimeConfig
from pipeline.data.dicom import scan_position
from pipeline.data.guards import Limits
from pipeline.data.images import to_slice
from pipeline.data.manifest import scan_levels, slice_numbers
from pipeline.data.series import write_segmentation
from pipeline.data.volumes import Volume, is_volume, open_volume, save_nifti
from pipeline.detector import DecodedBatch, Detector
from pipeline.errors import ImageDecodeError, PipelineError, unexpected
from pipeline.inputs import InputFile, Scan, collect, find_scans
from pipeline.io import check_output_file, check_output_folder, display_name, remove_tree, write_csv
from pipeline.packaging import default_model, load_detector
from pipeline.params import params_section
from pipeline.plots import reconstruction_grid, save_figure
from pipeline.progress import progress

log = logging.getLogger(__name__)
COLUMNS = ["path", "scan", "slice", "score", "is_anomaly", "threshold", "model", "run_id", "error"]
SOFTWARE = version("brain-ct-anomaly")  # what made a DICOM-SEG, in its header
CHUNK = 64  # files (or a volume's slices) decoded and scored at a time: memory stays flat on large folders
OnMap = Callable[[int, np.ndarray], None]  # (input order, its anomaly map on its own pixel grid)


def map_stems(
    maps: Path, files: list[InputFile], orders: list[int], scans: list[Scan]
) -> dict[int | str, Path]:
    """Where each input's maps go under `maps`, as a stem that `.map.png`, `.map.nii.gz`, `.seg.dcm`, ...
    complete: its place under PATH, with its full name (`a/b.png`, `a/ct.nii.gz`, a series' folder
    `a/ct`), so that no two inputs share one (a volume `ct.nii.gz` beside a series folder `ct/`). Keyed by
    the file's order, or by the series' name. A name taken already (several series of one folder beside
    a folder of that name, or names equal but for letter case) gets `~2`, `~3`, ... and a warning."""
    wanted: list[tuple[int | str, Path]] = [(order, files[order].relative) for order in orders]
    wanted += [(scan.name, scan.relative) for scan in scans]
    stems: dict[int | str, Path] = {}
    taken: set[str] = set()
    for key, relative in wanted:
        stem, copy = relative, 1
        while stem.as_posix().lower() in taken:
            copy += 1
            stem = relative.with_name(f"{relative.name}~{copy}")
        if copy > 1:
            log.warning("%s: its maps are named %s (the name %s is another input's)", key, stem, relative)
        taken.add(stem.as_posix().lower())
        stems[key] = maps / stem
    return stems


def _suffixed(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


def _heatmap(heatmaps: Path, item: InputFile, arrays: tuple[np.ndarray, ...], label: str) -> None:
    """One input's figure: `arrays` are its (1, ...) image, reconstruction and residual map."""
    figure = reconstruction_grid(*arrays, [display_name(label)])
    save_figure(figure, heatmaps / item.relative.with_name(f"{item.relative.name}.png"))


def _batch_rows(
    detector: Detector, batch: DecodedBatch, scores: np.ndarray, row: Callable[[int], dict]
) -> list[dict]:
    """A row per source of a batch, `row(index)` saying which it is: its score and label, or its error."""
    rows = [
        {**row(int(index)), "score": float(score), "is_anomaly": bool(detector.is_anomaly(score))}
        for index, score in zip(batch.decoded, scores, strict=True)
    ]
    return rows + [{**row(index), "error": reason} for index, reason in batch.errors.items()]


@dataclass(frozen=True)
class Around:
    """Slices of a scan read beside a batch of its slices for their brain window only (neighbours)."""

    below: list[int]  # orders of the slices just below the batch's, feet to head
    above: list[int]  # ... and just above
    numbers: Mapping[int, int]  # each slice's number in its scan (by order): who neighbours whom


def _slice_numbers(scan: Scan) -> dict[int, int]:
    """A series' slices numbered by position as the manifest numbers them (`manifest.slice_numbers`): a
    missing slice leaves a gap, so the slices either side of it are not each other's neighbours."""
    series = scan.series
    where = zip(series.headers, series.files, strict=True)
    positions = np.array([scan_position(header, file) for header, file in where], dtype=float)
    return dict(zip(scan.orders, slice_numbers(positions).tolist(), strict=True))


def _score_files(
    detector: Detector,
    files: list[InputFile],
    orders: list[int],
    heatmaps: Path | None,
    on_map: OnMap | None,
    levels: np.ndarray | None = None,
    around: Around | None = None,
) -> list[dict]:
    """Score the 2-D files at `orders` (their places in `files`) as one batch (`levels`: their places in
    their scan, where they are slices of one); `on_map` gets each decoded file's anomaly map on its own
    pixel grid as soon as it is made (so that no more than one is held). `around`: where the files are
    slices of one scan, the slices just below and above them, read too for their brain window as
    neighbour channels (`preprocess.neighbours`) and not scored."""
    chunk = [files[order] for order in orders]
    if around is None:
        batch = detector.decode([item.file for item in chunk], [item.path for item in chunk])
    else:
        read = [*around.below, *orders, *around.above]
        batch = detector.decode(
            [files[order].file for order in read],
            [files[order].path for order in read],
            [0] * len(read),
            [around.numbers[order] for order in read],
        ).within(len(around.below), len(around.below) + len(orders))
    reconstructions, scores = detector.reconstruct_and_score(
        batch.images, None if levels is None else levels[batch.decoded]
    )
    rows = _batch_rows(
        detector, batch, scores, lambda index: {"order": orders[index], "path": chunk[index].path}
    )
    if (heatmaps is None and on_map is None) or not len(batch.decoded):
        return rows
    residuals = detector.residual_maps(batch.images, reconstructions)
    for row, index in enumerate(batch.decoded):
        item, score, one = chunk[index], scores[row], slice(row, row + 1)
        if heatmaps is not None:
            arrays = (batch.images[one], reconstructions[one], residuals[one])
            _heatmap(heatmaps, item, arrays, f"{item.relative.name}\nscore {score:.3g}")
        if on_map is not None:
            on_map(orders[index], to_slice(residuals[row], batch.geometries[row]))
    return rows


def _score_images(
    detector: Detector,
    files: list[InputFile],
    orders: list[int],
    heatmaps: Path | None,
    stems: dict[int | str, Path] | None,
) -> list[dict]:
    """Score 2-D files as one batch; under --maps each gets its map and mask PNGs, written one by one."""

    def write(order: int, anomaly_map: np.ndarray) -> None:
        stem = stems[order]
        paths = (_suffixed(stem, ".map.png"), _suffixed(stem, ".mask.png"))
        maps_io.write_pngs(anomaly_map, detector.anomaly_mask(anomaly_map), paths)

    return _score_files(detector, files, orders, heatmaps, write if stems is not None else None)


def _log_scan_score(name: str, rows: list[dict]) -> None:
    scored = [row for row in rows if "score" in row]
    if scored:
        top = max(scored, key=lambda row: row["score"])
        log.info(
            "%s: scan score %.6g (the highest of its %d slices, at slice %d)%s",
            display_name(name),
            top["score"],
            len(scored),
            top["slice"],
            ", anomalous" if top["is_anomaly"] else "",
        )


def _save_scan_maps(detector: Detector, grid: np.ndarray, affine: np.ndarray, stem: Path) -> None:
    """A scan's map (NaN where a slice was not scored) and its mask (`maps.mask_labels`) as NIfTI."""
    save_nifti(grid, affine, _suffixed(stem, ".map.nii.gz"))
    save_nifti(maps_io.mask_labels(grid, detector.pixel_threshold), affine, _suffixed(stem, ".mask.nii.gz"))


def _score_series(
    detector: Detector,
    files: list[InputFile],
    scan: Scan,
    heatmaps: Path | None,
    stems: dict[int | str, Path] | None,
) -> list[dict]:
    """Score a DICOM series' slices (one row per file, numbered by position); under --maps, its map and
    mask as NIfTI with the series' affine and its mask as a DICOM-SEG referencing the series (slices not
    scored: NaN in the map, "not scored" in the masks)."""
    columns, rows_, count = scan.series.shape
    stack = np.full((count, rows_, columns), np.nan, dtype=np.float32) if stems is not None else None
    place = {order: index for index, order in enumerate(scan.orders)}

    def put(order: int, anomaly_map: np.ndarray) -> None:
        stack[place[order]] = anomaly_map

    rows = []
    n = detector.preprocess.neighbours
    numbers = _slice_numbers(scan) if n else {}
    for start in range(0, count, CHUNK):
        orders = scan.orders[start : start + CHUNK]
        levels = scan_levels([place[order] for order in orders], count)
        below, above = scan.orders[max(start - n, 0) : start], scan.orders[start + CHUNK : start + CHUNK + n]
        around = Around(below, above, numbers) if n else None
        on_map = put if stack is not None else None
        rows.extend(_score_files(detector, files, orders, heatmaps, on_map, levels, around))
    for row in rows:
        row.update(scan=scan.name, slice=place[row["order"]])
    _log_scan_score(scan.name, rows)
    if stack is not None:
        stem = stems[scan.name]
        scored = ~np.isnan(stack).all(axis=(1, 2))
        mask = detector.anomaly_mask(stack)  # NaN (not scored) is above no threshold
        write_segmentation(scan.series, mask, _suffixed(stem, ".seg.dcm"), SOFTWARE, scored)
        if scan.series.regular:
            _save_scan_maps(detector, scan.series.to_voxels(stack), scan.series.affine, stem)
        else:
            log.warning(
                "%s: its slices are unevenly spaced (a missing slice?): no NIfTI map, whose grid must be "
                "regular; the DICOM-SEG, which references each slice, is written",
                display_name(scan.name),
            )
    return rows


def _score_volume(
    detector: Detector,
    item: InputFile,
    order: int,
    heatmaps: Path | None,
    stems: dict[int | str, Path] | None,
) -> list[dict]:
    """Score every axial slice of a NIfTI volume, a slab at a time, one row each; the volume's score is the
    highest. Under --maps its map is placed slab by slab on the file's own grid (NaN where a slice was not
    scored). With `preprocess.neighbours` = n, a slab is read with n more slices on either side, whose
    brain window its edge slices see as neighbours. A volume whose header is refused is one error row;
    one that breaks while it is read keeps the rows of its slices already scored, and the others get the
    error."""
    base = {"order": order, "path": item.path, "scan": item.path}
    try:
        volume = open_volume(item.file, Limits.of(detector.preprocess))
    except ImageDecodeError as err:
        return [{**base, "error": err.reason}]
    rows: list[dict] = []
    best: tuple[float, int, tuple[np.ndarray, ...]] | None = None  # the top slice, for --heatmaps
    with volume:
        grid = np.full(volume.shape, np.nan, dtype=np.float32) if stems is not None else None
        slabs = list(volume.slabs(CHUNK))
        n = detector.preprocess.neighbours
        kept: dict[int, np.ndarray] = {}
        for number, (start, stop) in enumerate(slabs):
            below = max(start - n, 0)
            try:
                slices, kept = _read_with_margin(volume, start, stop, n, kept)
            except ImageDecodeError as err:
                rows += [
                    {**base, "slice": index, "error": err.reason}
                    for first, last in slabs[number:]
                    for index in range(first, last)
                ]
                break
            batch = detector.prepare_hounsfield(slices)
            if n:
                batch = batch.within(start - below, stop - below)
            del slices
            levels = scan_levels(start + batch.decoded, volume.count)
            reconstructions, scores = detector.reconstruct_and_score(batch.images, levels)
            rows += _batch_rows(
                detector, batch, scores, lambda index, first=start: {**base, "slice": first + index}
            )
            if (heatmaps is None and grid is None) or not len(batch.decoded):
                continue
            residuals = detector.residual_maps(batch.images, reconstructions)
            if grid is not None:
                slab = np.full((stop - start, *volume.slice_shape), np.nan, dtype=np.float32)
                for row, index in enumerate(batch.decoded):
                    slab[index] = to_slice(residuals[row], batch.geometries[row])
                volume.put_slices(grid, start, slab)
            if heatmaps is not None:
                top = int(np.argmax(scores))
                if best is None or scores[top] > best[0]:
                    one = slice(top, top + 1)
                    arrays = (batch.images[one], reconstructions[one], residuals[one])
                    best = (float(scores[top]), start + int(batch.decoded[top]), arrays)
        _log_scan_score(item.path, rows)
        if heatmaps is not None and best is not None:  # the volume's figure: its highest-scoring slice
            _heatmap(heatmaps, item, best[2], f"{item.relative.name} slice {best[1]}\nscore {best[0]:.3g}")
        if grid is not None:
            _save_scan_maps(detector, grid, volume.affine, stems[order])
    return rows


def _read_with_margin(
    volume: Volume, start: int, stop: int, n: int, kept: dict[int, np.ndarray]
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """A volume's displayed slices [start - n, stop + n) (clipped to the volume) in HU, and them by index
    for the next slab: the margin the previous slab read already comes from `kept`, so that a `.nii.gz`
    is read forward once, never sought back (which would decompress it again from its start). Without
    neighbours, the slab alone."""
    if not n:
        return volume.read(start, stop), {}
    wanted = range(max(start - n, 0), min(stop + n, volume.count))
    missing = [index for index in wanted if index not in kept]
    if missing:
        read = volume.read(missing[0], missing[-1] + 1)
        kept = kept | dict(zip(range(missing[0], missing[-1] + 1), read, strict=True))
    slices = np.stack([kept[index] for index in wanted])
    edge = [place for place, index in enumerate(wanted) if not start + n <= index < stop - n]
    return slices, {wanted[place]: slices[place].copy() for place in edge}


def _guarded(job: Callable[[], list[dict]], files: list[InputFile], orders: list[int]) -> list[dict]:
    """The job's rows; an exception no reader anticipated (a bug, memory exhausted) gives its inputs an
    error row each instead of ending the run, and is logged with its traceback."""
    try:
        return job()
    except Exception as err:  # noqa: BLE001
        log.exception("%s: unexpected error while it was scored", display_name(files[orders[0]].path))
        return [{"order": order, "path": files[order].path, "error": unexpected(err)} for order in orders]


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
    others = [order for order in readable if not is_volume(files[order].file)]
    scans, images, refused = find_scans(files, others, Limits.of(detector.preprocess))
    stems = map_stems(maps, files, images + volumes, scans) if maps is not None else None
    # a job, with the inputs it scores: up to CHUNK images as one batch, a volume or a series (their
    # slices CHUNK at a time)
    jobs: list[tuple[Callable[[], list[dict]], list[int]]] = [
        (
            partial(_score_images, detector, files, images[start : start + CHUNK], heatmaps, stems),
            images[start : start + CHUNK],
        )
        for start in range(0, len(images), CHUNK)
    ]
    jobs += [
        (partial(_score_volume, detector, files[order], order, heatmaps, stems), [order]) for order in volumes
    ]
    jobs += [(partial(_score_series, detector, files, scan, heatmaps, stems), scan.orders) for scan in scans]
    errors = {order: item.error for order, item in enumerate(files) if item.error} | refused
    rows = [{"order": order, "path": files[order].path, "error": error} for order, error in errors.items()]
    for job, orders in progress(jobs, desc="predict", unit="batch"):
        rows += _guarded(job, files, orders)
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
                check_output_folder(folder, option, inputs=args.path)
        hardware.configure(params_section("runtime", RuntimeConfig).threads)
        model = args.model or str(default_model())
        detector = load_detector(model)
        if args.maps is not None:
            maps_io.check_detector(detector)
        extracted = Path(tempfile.mkdtemp(prefix="predict-"))  # not TemporaryDirectory: its rmtree recurses
        try:
            files = collect(args.path, extracted, params_section("archive", ArchiveLimits))
            scores = predict(detector, files, model, args.heatmaps, args.maps)
        finally:
            remove_tree(extracted)
        write_csv(args.out, scores, for_people=True)
    except (PipelineError, OSError) as err:  # OSError: a file or folder this account cannot read or write
        print(f"error: {err}", file=sys.stderr)
        return 1
    failed = scores["error"].notna()
    for row in scores[failed].itertuples():
        where = "" if pd.isna(row.slice) else f" slice {row.slice}"
        print(f"warning: {display_name(row.path)}{where}: {row.error}", file=sys.stderr)
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
