"""A DICOM series as one scan: its slices in order along the scan's axis, its geometry, and masks on it
as DICOM-SEG (highdicom).

The slices keep their stored pixel order (rows, columns), as every DICOM slice is scored; the series'
affine maps voxel (column, row, slice) to RAS millimetres, as a NIfTI file stores it, so a map stacked
from the slices' maps opens over the scan in 3D Slicer or ITK-SNAP. A DICOM-SEG references the series'
own instances and needs no geometry at all. Every header and DICOM-SEG is read through
`dicom.read_dataset`, within the limits (`guards.Limits`), and a series whose headers declare more than
they allow is refused from its headers.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipeline.core.errors import ImageDecodeError, describe
from pipeline.data.dicom import (
    Placement,
    check_pixel_data,
    frame_size,
    header_bytes,
    is_dicom,
    placement,
    read_dataset,
    segmentation_bytes,
)
from pipeline.data.guards import DEFAULT_LIMITS, Limits, check_pixels

log = logging.getLogger(__name__)
logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every attribute it copies, at INFO
# The segment of a predicted DICOM-SEG over the slices that were not scored: a private code (PS3.16
# 8.2: a private coding scheme's designator begins with "99"), as no standard one says "not read".
NOT_SCORED = hd.sr.CodedConcept("NOTSCORED", "99BRAINCT", "Not scored")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Type-2 attributes a DICOM-SEG copies from its source; anonymisers often strip them.
_COPIED_EMPTY = (
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class Series:
    files: tuple[Path, ...]  # feet to head
    headers: tuple[Dataset, ...]  # without pixel data, in the same order
    affine: np.ndarray  # voxel (column, row, slice) -> RAS mm
    regular: bool  # slices evenly spaced: the affine holds for every slice (no gap)

    @property
    def uid(self) -> str:
        return str(self.headers[0].SeriesInstanceUID)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(columns, rows, slices): the NIfTI voxel grid."""
        return int(self.headers[0].Columns), int(self.headers[0].Rows), len(self.files)

    def to_voxels(self, slices: np.ndarray) -> np.ndarray:
        """(slices, rows, columns) arrays in the series' order -> the (columns, rows, slices) grid."""
        return np.transpose(slices, (2, 1, 0))


def read_header(path: Path, limits: Limits = DEFAULT_LIMITS) -> Dataset | None:
    """A DICOM file's header (`dicom.read_dataset` within `limits`), or None when it is not one or
    cannot be read (the slice reader then names the problem)."""
    if not is_dicom(path):
        return None
    try:
        header = read_dataset(path, path, header_bytes(limits), pixels=False)
        for _ in header:  # converts each element now: a malformed one raises here, not where it is used
            pass
    except Exception:  # noqa: BLE001 -- pydicom raises many kinds on a malformed file
        return None
    return header


def is_segmentation(header: Dataset | None) -> bool:
    return header is not None and header.get("Modality") == "SEG"


Member = tuple[Path, Dataset, Placement]  # a slice of a series: its file, header and geometry


def _series(members: list[Member]) -> Series:
    """Sort one series' slices along its normal and derive its affine."""
    first = members[0][2]
    members = sorted(members, key=lambda member: float(np.dot(first.normal, member[2].position)))
    positions = [where.position for _, _, where in members]
    steps = np.diff([float(np.dot(first.normal, position)) for position in positions])
    row, column = first.orientation
    spacing_rows, spacing_columns = first.spacing
    affine = np.eye(4)
    affine[:3, 0] = row * spacing_columns  # along a row: the column index grows
    affine[:3, 1] = column * spacing_rows
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine[:3, 3] = positions[0]
    regular = bool(np.allclose(steps, np.median(steps), rtol=0.1))
    files, headers = (tuple(member[i] for member in members) for i in (0, 1))
    return Series(files, headers, LPS_TO_RAS @ affine, regular)


def _grouped(path: Path, limits: Limits) -> tuple[tuple, Member] | None:
    """A slice's series key (folder, series UID, orientation, size) and its member entry; None for a
    file that cannot be part of a series: not a DICOM slice, a DICOM-SEG, no series UID, a geometry
    missing or malformed (`placement`)."""
    header = read_header(path, limits)
    if header is None or is_segmentation(header) or header.get("SeriesInstanceUID") is None:
        return None
    try:
        where = placement(header, path)
        size = frame_size(header, path)
    except ImageDecodeError:
        return None
    if not where.complete:
        return None
    orientation = tuple(np.round(where.orientation, 4).ravel())
    return (path.parent, str(header.SeriesInstanceUID), orientation, size), (path, header, where)


def _too_large(members: list[Member], rows: int, columns: int, limits: Limits) -> str | None:
    """Why a series is refused for its size: its slices above preprocess.max_pixels each, or above
    preprocess.max_voxels together (its maps are that large); None when it is not."""
    try:
        check_pixels(members[0][0], columns, rows, limits.max_pixels)
    except ImageDecodeError as err:
        return err.reason
    voxels = rows * columns * len(members)
    if voxels > limits.max_voxels:
        return (
            f"one of {len(members)} slices of {columns}x{rows} pixels: their {voxels} voxels are above "
            f"preprocess.max_voxels ({limits.max_voxels})"
        )
    return None


def find_series(
    files: list[Path], limits: Limits = DEFAULT_LIMITS
) -> tuple[list[Series], list[Path], dict[Path, str]]:
    """Group DICOM slices into series: two or more slices of one folder with the same series UID,
    orientation and size, each at its own position. Returns the series; the files that are in none
    (single images, other formats, slices without geometry or with a malformed one: each is scored on
    its own, where the slice reader names what is wrong); and the files of series refused for their
    size (`limits`: preprocess.max_pixels a slice, max_voxels together), each with the reason. Reads
    headers only, and never raises on one."""
    groups: dict[tuple, list[Member]] = defaultdict(list)
    rest = []
    for path in files:
        grouped = _grouped(path, limits)
        if grouped is None:
            rest.append(path)
        else:
            groups[grouped[0]].append(grouped[1])
    series, refused = [], {}
    for (folder, uid, _, (rows, columns)), members in groups.items():
        normal = members[0][2].normal
        positions = [round(float(np.dot(normal, where.position)), 3) for _, _, where in members]
        if len(members) < 2 or len(set(positions)) < len(positions):
            if len(members) > 1:
                log.warning(
                    "%s: series %s has slices at the same position; its slices are scored alone", folder, uid
                )
            rest.extend(path for path, _, _ in members)
        elif reason := _too_large(members, rows, columns, limits):
            refused.update(dict.fromkeys((path for path, _, _ in members), reason))
        else:
            series.append(_series(members))
    return series, sorted(rest), refused


def _filled(header: Dataset, thickness: float) -> Dataset:
    """A copy of `header` with the attributes a DICOM-SEG copies present (empty where stripped)."""
    header = copy.deepcopy(header)
    for keyword in _COPIED_EMPTY:
        if keyword not in header:
            setattr(header, keyword, "")
    if header.get("SliceThickness") in (None, ""):
        header.SliceThickness = thickness
    return header


def write_segmentation(
    series: Series, mask: np.ndarray, path: Path, software: str, scored: np.ndarray | None = None
) -> None:
    """Write `mask` ((slices, rows, columns) booleans in the series' order) as a binary DICOM-SEG
    referencing the series' instances, so that viewers load it over the series: segment 1, "anomaly",
    is the mask. `scored` says per slice whether it was scored (None: every slice, as for a mask drawn by
    hand); the slices that were not get segment 2, "not scored", over the whole slice, so that no viewer
    shows them as clean."""
    thickness = float(np.linalg.norm(series.affine[:3, 2]))
    sources = [_filled(header, thickness) for header in series.headers]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="brain-ct-anomaly", version=software, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="anomaly",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
    ]
    pixels = np.asarray(mask, dtype=bool)
    unscored = np.zeros(len(series.files), dtype=bool) if scored is None else ~np.asarray(scored, dtype=bool)
    if unscored.shape != (len(series.files),):
        raise ValueError(
            f"scored has shape {unscored.shape}; expected one value per slice ({len(series.files)})"
        )
    if unscored.any():
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=2,
                segment_label="not scored",
                segmented_property_category=codes.cid7150.SpatialAndRelationalConcept,
                segmented_property_type=NOT_SCORED,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
        whole = np.broadcast_to(unscored[:, None, None], pixels.shape)
        pixels = np.stack([pixels & ~whole, whole], axis=-1)
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="brain-ct-anomaly",
        manufacturer_model_name="convolutional autoencoder anomaly detector",
        software_versions=software,
        device_serial_number="0",
        omit_empty_frames=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    segmentation.save_as(path)


def read_segmentation(path: Path, series: Series, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """A DICOM-SEG's segments (all of them: any segment is the finding, but a "not scored" one) on
    `series`' slices, as (slices, rows, columns) booleans in the series' order; a SEG drawn on another
    series is an error. Read within `limits` (`dicom.read_dataset`): its frames' size and count are
    checked against the series before any is decoded."""
    dataset = read_dataset(path, path, segmentation_bytes(limits))
    columns, rows, count = series.shape
    try:
        if frame_size(dataset, path) != (rows, columns):
            raise ImageDecodeError(
                path,
                f"mask size {frame_size(dataset, path)} differs from its series' slices {(rows, columns)}",
            )
        segments = len(dataset.get("SegmentSequence") or [])
        check_pixel_data(dataset, path, limits.max_pixels, max_frames=max(segments, 1) * count)
        segmentation = hd.seg.Segmentation.from_dataset(dataset, copy=False)
        referenced = {uid for _, _, uid in segmentation.get_source_image_uids()}
        instances = [str(header.SOPInstanceUID) for header in series.headers]
        if not referenced & set(instances):
            raise ImageDecodeError(path, f"references none of the slices of series {series.uid}")
        findings = [
            number
            for number in segmentation.get_segment_numbers()
            if segmentation.get_segment_description(number).segmented_property_type != NOT_SCORED
        ]
        pixels = segmentation.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid for uid in instances if uid in referenced],
            segment_numbers=findings,
            combine_segments=True,
            skip_overlap_checks=True,
        )
    except ImageDecodeError:
        raise
    except Exception as err:  # noqa: BLE001 -- highdicom raises ValueError, AttributeError, KeyError, ...
        raise ImageDecodeError(path, f"cannot read DICOM-SEG: {describe(err)}") from None
    masks = np.zeros((count, rows, columns), dtype=bool)
    index = {uid: i for i, uid in enumerate(instances)}
    for uid, frame in zip((u for u in instances if u in referenced), pixels, strict=True):
        masks[index[uid]] = frame != 0
    return masks
