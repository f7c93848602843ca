"""The kinds of input predict scores, one class each in `INPUT_KINDS`: 2-D images, NIfTI volumes and
DICOM series.

A kind claims its inputs among the files PATH stands for, names each input's maps (`InputKind.named`),
and splits its inputs into jobs, each of which scores some of them with the detector and returns their
CSV rows (`order`: the file's place among the inputs, `path`, and a `score` and `is_anomaly` or an
`error`; a scan's slices a `scan` and `slice` too), writing their figures and maps on the way. Kinds
claim in registration order, the one that `takes_the_rest` last: a new kind is one class registered
here, and predict scores its files.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

import numpy as np

from pipeline.core.errors import ImageDecodeError
from pipeline.core.io import display_name
from pipeline.core.registry import Registry
from pipeline.data.dicom import scan_position
from pipeline.data.guards import Limits
from pipeline.data.images import to_slice
from pipeline.data.manifest import scan_levels, slice_numbers
from pipeline.data.series import write_segmentation
from pipeline.data.volumes import Volume, is_volume, open_volume, save_nifti
from pipeline.detection import maps as maps_io
from pipeline.detection.detector import DecodedBatch, Detector
from pipeline.evaluation.plots import reconstruction_grid, save_figure
from pipeline.inputs.collect import InputFile, Scan, find_scans

log = logging.getLogger(__name__)
SOFTWARE = version("brain-ct-anomaly")  # what made a DICOM-SEG, in its header
MapKey = int | str  # an input's key among the maps' stems: its file's order, or a series' name
OnMap = Callable[[int, np.ndarray], None]  # (input order, its anomaly map on its own pixel grid)
T = TypeVar("T")  # what a kind scores as one input: a file's order, or a group of files (a Scan)


@dataclass(frozen=True)
class Scorer:
    """What every kind scores with: the detector, the inputs, and where figures and maps go."""

    detector: Detector
    files: list[InputFile]
    heatmaps: Path | None  # --heatmaps: a figure per input
    stems: dict[MapKey, Path] | None  # --maps: each input's maps' path but for their suffix
    chunk: int  # files (or a scan's slices) decoded and scored at a time

    def map_path(self, key: MapKey, suffix: str) -> Path:
        """Where one of an input's maps goes: its stem completed by `suffix` (`.map.png`, ...)."""
        stem = self.stems[key]
        return stem.with_name(stem.name + suffix)


@dataclass(frozen=True)
class Claim(Generic[T]):
    """What a kind takes of the files offered to it."""

    inputs: list[T]  # what it scores
    taken: frozenset[int]  # the orders of every file it takes: no later kind is offered them
    refused: dict[int, str] = field(default_factory=dict)  # files taken but not scored, with why


@dataclass(frozen=True)
class Job:
    """Some inputs scored together; an unexpected error in `score` costs these inputs alone."""

    score: Callable[[], list[dict]]
    orders: list[int]  # the files it scores, each of which gets an error row if it fails


class InputKind(ABC, Generic[T]):
    """One kind of input: which files are its inputs, what its maps are named after, how it scores."""

    takes_the_rest: ClassVar[bool] = False  # claims after every other kind: whatever they left

    @abstractmethod
    def claim(self, files: list[InputFile], orders: list[int], limits: Limits) -> Claim[T]:
        """Its inputs among the readable files at `orders` (those no kind before it took); `limits`
        refuse what is too large before it is read."""

    @abstractmethod
    def named(self, files: list[InputFile], each: T) -> tuple[MapKey, Path]:
        """An input's key among the maps' stems and its place under PATH, which its maps' names mirror."""

    @abstractmethod
    def jobs(self, scorer: Scorer, inputs: list[T]) -> list[Job]:
        """Its inputs' scoring, in as many jobs as keep memory flat and one bad input from the others."""


class FileKind(InputKind[int]):
    """A kind whose every input is one file, named by its order: the files `claims` accepts."""

    @abstractmethod
    def claims(self, item: InputFile) -> bool:
        """Whether `item` is an input of this kind."""

    def claim(self, files: list[InputFile], orders: list[int], limits: Limits) -> Claim[int]:
        mine = [order for order in orders if self.claims(files[order])]
        return Claim(mine, frozenset(mine))

    def named(self, files: list[InputFile], each: int) -> tuple[MapKey, Path]:
        return each, files[each].relative


INPUT_KINDS: Registry[type[InputKind]] = Registry("input kind", "python -m pipeline.predict PATH")


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


def _score_files(
    scorer: Scorer,
    orders: list[int],
    on_map: OnMap | None,
    levels: np.ndarray | None = None,
    around: Around | None = None,
) -> list[dict]:
    """Score the 2-D files at `orders` (their places in `scorer.files`) as one batch (`levels`: their
    places in their scan, where they are slices of one); `on_map` gets each decoded file's anomaly map on
    its own pixel grid as soon as it is made (so that no more than one is held). `around`: where the
    files are slices of one scan, the slices just below and above them, read too for their brain window
    as neighbour channels (`preprocess.neighbours`) and not scored."""
    detector, files, heatmaps = scorer.detector, scorer.files, scorer.heatmaps
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


def _save_scan_maps(scorer: Scorer, key: MapKey, grid: np.ndarray, affine: np.ndarray) -> None:
    """A scan's map (NaN where a slice was not scored) and its mask (`maps.mask_labels`) as NIfTI."""
    save_nifti(grid, affine, scorer.map_path(key, ".map.nii.gz"))
    labels = maps_io.mask_labels(grid, scorer.detector.pixel_threshold)
    save_nifti(labels, affine, scorer.map_path(key, ".mask.nii.gz"))


@INPUT_KINDS.register("image")
class ImageKind(FileKind):
    """2-D image files (PNG, JPEG, a DICOM slice in no series, ...): every file the other kinds leave,
    which the decoder reads or refuses with the reason. Scored `chunk` at a time; under --maps each gets
    its map and mask PNGs."""

    takes_the_rest = True

    def claims(self, item: InputFile) -> bool:
        return True

    def jobs(self, scorer: Scorer, inputs: list[int]) -> list[Job]:
        batches = [inputs[start : start + scorer.chunk] for start in range(0, len(inputs), scorer.chunk)]
        return [Job(partial(self._score, scorer, orders), orders) for orders in batches]

    def _score(self, scorer: Scorer, orders: list[int]) -> list[dict]:
        def write(order: int, anomaly_map: np.ndarray) -> None:
            paths = (scorer.map_path(order, ".map.png"), scorer.map_path(order, ".mask.png"))
            maps_io.write_pngs(anomaly_map, scorer.detector.anomaly_mask(anomaly_map), paths)

        return _score_files(scorer, orders, write if scorer.stems is not None else None)


@INPUT_KINDS.register("volume")
class VolumeKind(FileKind):
    """NIfTI volumes (.nii, .nii.gz), scored axial slice by axial slice, one job each."""

    def claims(self, item: InputFile) -> bool:
        return is_volume(item.file)

    def jobs(self, scorer: Scorer, inputs: list[int]) -> list[Job]:
        return [Job(partial(self._score, scorer, order), [order]) for order in inputs]

    def _score(self, scorer: Scorer, order: int) -> list[dict]:
        """Score every axial slice of a NIfTI volume, a slab at a time, one row each; the volume's score
        is the highest. Under --maps its map is placed slab by slab on the file's own grid (NaN where a
        slice was not scored). With `preprocess.neighbours` = n, a slab is read with n more slices on
        either side, whose brain window its edge slices see as neighbours. A volume whose header is
        refused is one error row; one that breaks while it is read keeps the rows of its slices already
        scored, and the others get the error."""
        detector, heatmaps, item = scorer.detector, scorer.heatmaps, scorer.files[order]
        base = {"order": order, "path": item.path, "scan": item.path}
        try:
            volume = open_volume(item.file, Limits.of(detector.preprocess))
        except ImageDecodeError as err:
            return [{**base, "error": err.reason}]
        rows: list[dict] = []
        best: tuple[float, int, tuple[np.ndarray, ...]] | None = None  # the top slice, for --heatmaps
        with volume:
            grid = np.full(volume.shape, np.nan, dtype=np.float32) if scorer.stems is not None else None
            slabs = list(volume.slabs(scorer.chunk))
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
                label = f"{item.relative.name} slice {best[1]}\nscore {best[0]:.3g}"
                _heatmap(heatmaps, item, best[2], label)
            if grid is not None:
                _save_scan_maps(scorer, order, grid, volume.affine)
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


def _slice_numbers(scan: Scan) -> dict[int, int]:
    """A series' slices numbered by position as the manifest numbers them (`manifest.slice_numbers`): a
    missing slice leaves a gap, so the slices either side of it are not each other's neighbours."""
    series = scan.series
    where = zip(series.headers, series.files, strict=True)
    positions = np.array([scan_position(header, file) for header, file in where], dtype=float)
    return dict(zip(scan.orders, slice_numbers(positions).tolist(), strict=True))


@INPUT_KINDS.register("series")
class SeriesKind(InputKind[Scan]):
    """DICOM series (`inputs.find_scans`), each one scan scored slice by slice, one job each. It takes
    every DICOM file in a series, refuses the files of series too large, and takes DICOM-SEG files
    (lesion masks) as no input at all."""

    def claim(self, files: list[InputFile], orders: list[int], limits: Limits) -> Claim[Scan]:
        scans, singles, refused = find_scans(files, orders, limits)
        return Claim(scans, frozenset(orders) - frozenset(singles), refused)

    def named(self, files: list[InputFile], each: Scan) -> tuple[MapKey, Path]:
        return each.name, each.relative

    def jobs(self, scorer: Scorer, inputs: list[Scan]) -> list[Job]:
        return [Job(partial(self._score, scorer, scan), scan.orders) for scan in inputs]

    def _score(self, scorer: Scorer, scan: Scan) -> list[dict]:
        """Score a DICOM series' slices (one row per file, numbered by position); under --maps, its map
        and mask as NIfTI with the series' affine and its mask as a DICOM-SEG referencing the series
        (slices not scored: NaN in the map, "not scored" in the masks)."""
        detector, chunk = scorer.detector, scorer.chunk
        columns, rows_, count = scan.series.shape
        stack = None if scorer.stems is None else np.full((count, rows_, columns), np.nan, dtype=np.float32)
        place = {order: index for index, order in enumerate(scan.orders)}

        def put(order: int, anomaly_map: np.ndarray) -> None:
            stack[place[order]] = anomaly_map

        rows = []
        n = detector.preprocess.neighbours
        numbers = _slice_numbers(scan) if n else {}
        for start in range(0, count, chunk):
            stop = start + chunk
            orders = scan.orders[start:stop]
            levels = scan_levels([place[order] for order in orders], count)
            below, above = scan.orders[max(start - n, 0) : start], scan.orders[stop : stop + n]
            around = Around(below, above, numbers) if n else None
            rows.extend(_score_files(scorer, orders, put if stack is not None else None, levels, around))
        for row in rows:
            row.update(scan=scan.name, slice=place[row["order"]])
        _log_scan_score(scan.name, rows)
        if stack is not None:
            scored = ~np.isnan(stack).all(axis=(1, 2))
            mask = detector.anomaly_mask(stack)  # NaN (not scored) is above no threshold
            write_segmentation(scan.series, mask, scorer.map_path(scan.name, ".seg.dcm"), SOFTWARE, scored)
            if scan.series.regular:
                _save_scan_maps(scorer, scan.name, scan.series.to_voxels(stack), scan.series.affine)
            else:
                log.warning(
                    "%s: its slices are unevenly spaced (a missing slice?): no NIfTI map, whose grid must "
                    "be regular; the DICOM-SEG, which references each slice, is written",
                    display_name(scan.name),
                )
        return rows
