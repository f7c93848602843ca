"""A DICOM series as one scan: its slices in order along the scan's axis, its geometry, and masks on it
as DICOM-SEG (highdicom).

The slices keep their stored pixel order (rows, columns), as every DICOM slice is scored; the series'
affine maps voxel (column, row, slice) to RAS millimetres, as a NIfTI file stores it, so a map stacked
from the slices' maps opens over the scan in 3D Slicer or ITK-SNAP. A DICOM-SEG references the series'
own instances and needs no geometry at all.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipeline.data.dicom import is_dicom
from pipeline.errors import ImageDecodeError

log = logging.getLogger(__name__)
logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every attribute it copies, at INFO
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
_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SeriesInstanceUID")


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


def read_header(path: Path) -> Dataset | None:
    """A DICOM file's header, or None when it is not one (the slice reader then names the problem)."""
    if not is_dicom(path):
        return None
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 -- pydicom raises many kinds on a malformed file
        return None


def is_segmentation(header: Dataset | None) -> bool:
    return header is not None and header.get("Modality") == "SEG"


def _normal(header: Dataset) -> np.ndarray:
    row, column = np.asarray(header.ImageOrientationPatient, dtype=float).reshape(2, 3)
    return np.cross(row, column)


def _series(files: list[Path], headers: list[Dataset]) -> Series:
    """Sort one series' slices along its normal and derive its affine."""
    normal = _normal(headers[0])
    positions = [np.asarray(h.ImagePositionPatient, dtype=float) for h in headers]
    order = np.argsort([float(np.dot(normal, p)) for p in positions], kind="stable")
    files, headers, positions = ([seq[i] for i in order] for seq in (files, headers, positions))
    steps = np.diff([float(np.dot(normal, p)) for p in positions])
    row, column = np.asarray(headers[0].ImageOrientationPatient, dtype=float).reshape(2, 3)
    spacing_rows, spacing_columns = (float(v) for v in headers[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row * spacing_columns  # along a row: the column index grows
    affine[:3, 1] = column * spacing_rows
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine[:3, 3] = positions[0]
    regular = bool(np.allclose(steps, np.median(steps), rtol=0.1))
    return Series(tuple(files), tuple(headers), LPS_TO_RAS @ affine, regular)


def find_series(files: list[Path]) -> tuple[list[Series], list[Path]]:
    """Group DICOM slices into series: two or more slices of one folder with the same series UID,
    orientation and size, each at its own position. Returns the series and the files that are in none
    (single images, other formats, slices without geometry: each is scored on its own)."""
    groups: dict[tuple, list[tuple[Path, Dataset]]] = defaultdict(list)
    rest = []
    for path in files:
        header = read_header(path)
        if header is None or is_segmentation(header) or any(header.get(tag) is None for tag in _GEOMETRY):
            rest.append(path)
            continue
        orientation = tuple(np.round(np.asarray(header.ImageOrientationPatient, dtype=float), 4))
        key = (
            path.parent,
            str(header.SeriesInstanceUID),
            orientation,
            header.get("Rows"),
            header.get("Columns"),
        )
        groups[key].append((path, header))
    series = []
    for (folder, uid, *_), members in groups.items():
        normal = _normal(members[0][1])
        positions = [round(float(np.dot(normal, h.ImagePositionPatient)), 3) for _, h in members]
        if len(members) < 2 or len(set(positions)) < len(positions):
            if len(members) > 1:
                log.warning(
                    "%s: series %s has slices at the same position; its slices are scored alone", folder, uid
                )
            rest.extend(path for path, _ in members)
            continue
        series.append(_series([p for p, _ in members], [h for _, h in members]))
    return series, sorted(rest)


def _filled(header: Dataset, thickness: float) -> Dataset:
    """A copy of `header` with the attributes a DICOM-SEG copies present (empty where stripped)."""
    header = copy.deepcopy(header)
    for keyword in _COPIED_EMPTY:
        if keyword not in header:
            setattr(header, keyword, "")
    if header.get("SliceThickness") in (None, ""):
        header.SliceThickness = thickness
    return header


def write_segmentation(series: Series, mask: np.ndarray, path: Path, software: str) -> None:
    """Write `mask` ((slices, rows, columns) booleans in the series' order) as a binary DICOM-SEG with
    one segment, "anomaly", referencing the series' instances: viewers load it over the series."""
    thickness = float(np.linalg.norm(series.affine[:3, 2]))
    sources = [_filled(header, thickness) for header in series.headers]
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="anomaly",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="brain-ct-anomaly", version=software, family=codes.cid7162.ArtificialIntelligence
        ),
    )
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.asarray(mask, dtype=bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
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


def read_segmentation(path: Path, series: Series) -> np.ndarray:
    """A DICOM-SEG's segments (all of them: any segment is the finding) on `series`' slices, as
    (slices, rows, columns) booleans in the series' order; a SEG drawn on another series is an error."""
    try:
        segmentation = hd.seg.segread(path)
        referenced = {uid for _, _, uid in segmentation.get_source_image_uids()}
        instances = [str(header.SOPInstanceUID) for header in series.headers]
        if not referenced & set(instances):
            raise ImageDecodeError(path, f"references none of the slices of series {series.uid}")
        pixels = segmentation.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid for uid in instances if uid in referenced],
            combine_segments=True,
            skip_overlap_checks=True,
        )
    except ImageDecodeError:
        raise
    except Exception as err:  # noqa: BLE001 -- highdicom raises ValueError, AttributeError, KeyError, ...
        raise ImageDecodeError(path, f"cannot read DICOM-SEG: {' '.join(str(err).split())}") from None
    masks = np.zeros((len(instances), *pixels.shape[1:3]), dtype=bool)
    index = {uid: i for i, uid in enumerate(instances)}
    for uid, frame in zip((u for u in instances if u in referenced), pixels, strict=True):
        masks[index[uid]] = frame != 0
    if masks.shape[1:] != (series.shape[1], series.shape[0]):
        raise ImageDecodeError(path, f"mask size {masks.shape[1:]} differs from its series' slices")
    return masks
