"""Read single-slice CT DICOM files as Hounsfield units and window them for the models.

PNG/JPEG exports of CT have already been windowed by whoever exported them; DICOM keeps the
scanner's calibrated values, so this module converts them to HU and lets the config choose the window.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_rescale
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pipeline.config import MAX_PIXELS
from pipeline.data.guards import check_pixels, file_type
from pipeline.errors import ImageDecodeError

HU_RANGE = (-1024.0, 3071.0)  # what a 12-bit CT stores; a volume's HU beyond are clipped
PLANES = ("sagittal", "coronal", "axial")  # by the patient axis (x, y, z) a slice's normal runs along
# PS3.10 section 7.1: a 128-byte preamble, then the 4-byte prefix "DICM".
_PREAMBLE_LENGTH = 128
_PREFIX = b"DICM"


def _head(source: Path | bytes) -> bytes:
    """The first bytes of `source`, enough to hold the preamble and prefix."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[: _PREAMBLE_LENGTH + len(_PREFIX)])
    with Path(source).open("rb") as handle:
        return handle.read(_PREAMBLE_LENGTH + len(_PREFIX))


def _has_prefix(head: bytes) -> bool:
    """True when the "DICM" prefix follows the preamble: the Part-10 signature."""
    return head[_PREAMBLE_LENGTH : _PREAMBLE_LENGTH + len(_PREFIX)] == _PREFIX


def _has_dcm_suffix(name: str | Path) -> bool:
    return Path(name).suffix.lower() == ".dcm"


def is_dicom(source: Path | bytes) -> bool:
    """True for a DICOM Part-10 file, or for a path named *.dcm.

    Old scanners and some anonymisers write bare datasets without the preamble; the `.dcm` suffix is
    then the only sign, so such files are routed here and `read_hounsfield` reports if they are not
    DICOM after all. A path that cannot be read is not DICOM: whichever decoder follows names the error.
    """
    if isinstance(source, (bytes, bytearray)):
        return _has_prefix(_head(source))
    if _has_dcm_suffix(source):
        return True
    try:
        return _has_prefix(_head(source))
    except OSError:
        return False


def _rescaled(stored: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Stored values -> HU through the modality LUT (RescaleSlope * stored + RescaleIntercept).

    pydicom's `apply_rescale` leaves the values untouched unless *both* tags are present, so a
    file carrying only one of them gets the standard default for the other (slope 1, intercept 0).
    """
    if "ModalityLUTSequence" not in dataset:
        if dataset.get("RescaleSlope") is None:
            dataset.RescaleSlope = 1
        if dataset.get("RescaleIntercept") is None:
            dataset.RescaleIntercept = 0
    return np.asarray(apply_rescale(stored, dataset), dtype=np.float32)


def read_hounsfield(
    source: Path | bytes, name: str | Path, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one CT slice to a float32 (rows, columns) array in HU, plus metadata for the manifest.

    `name` is what errors name: the path, or a display name when `source` is bytes (its `.dcm`
    suffix also admits a file without preamble). A slice of more than `max_pixels` pixels is refused
    from its header, before its pixel data is decoded. MONOCHROME1 slices display low values as white, but
    that inversion belongs to display: HU come from the modality LUT alone, so both photometric
    interpretations give the same HU and nothing is inverted here.

    Raises ImageDecodeError for anything that is not a decodable single-frame grayscale slice.
    """
    try:
        return _read_hounsfield(source, name, max_pixels)
    except ImageDecodeError:
        raise
    except OSError as err:
        raise ImageDecodeError(name, f"cannot read: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001
        # On malformed input pydicom raises EOFError, ValueError, struct.error, KeyError, ..., and a
        # missing decoder plugin for compressed pixel data is a RuntimeError: each means a bad file.
        raise ImageDecodeError(name, "cannot decode DICOM: " + " ".join(str(err).split())) from None


def _read_hounsfield(
    source: Path | bytes, name: str | Path, max_pixels: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """`read_hounsfield` without the translation of pydicom's exceptions."""
    head = _head(source)
    prefixed = _has_prefix(head)
    in_memory = isinstance(source, (bytes, bytearray))
    if not prefixed and not _has_dcm_suffix(name if in_memory else source):
        raise ImageDecodeError(name, "not a DICOM file (no 'DICM' prefix after the 128-byte preamble)")
    kind = file_type(head)
    if not prefixed and kind is not None:  # a PNG, a text file, ... named .dcm
        raise ImageDecodeError(name, f"a {kind} file named {Path(name if in_memory else source).suffix}")
    # force=True only for the preamble-less .dcm: otherwise pydicom rejects what is not Part-10.
    dataset = pydicom.dcmread(io.BytesIO(source) if in_memory else Path(source), force=not prefixed)
    if "PixelData" not in dataset:
        raise ImageDecodeError(name, "no DICOM pixel data")
    if (
        dataset.get("ImageOrientationPatient") is not None
        and plane(dataset.ImageOrientationPatient) != "axial"
    ):
        facing = plane(dataset.ImageOrientationPatient)
        raise ImageDecodeError(
            name, f"a {facing} slice: the detector reads axial slices (reformat the scan axially)"
        )
    frames = int(dataset.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageDecodeError(name, f"multi-frame DICOM ({frames} frames); expected one slice")
    samples = int(dataset.get("SamplesPerPixel") or 1)
    if samples != 1:
        raise ImageDecodeError(name, f"colour DICOM ({samples} samples per pixel); expected grayscale")
    check_pixels(name, int(dataset.Columns), int(dataset.Rows), max_pixels)
    slope = dataset.get("RescaleSlope")
    if slope is not None and (float(slope) == 0 or not math.isfinite(float(slope))):
        raise ImageDecodeError(name, f"RescaleSlope is {slope}: its values do not map to Hounsfield units")
    stored = dataset.pixel_array  # a missing decoder plugin for compressed data raises here
    if stored.ndim != 2:
        raise ImageDecodeError(name, f"pixel data has shape {stored.shape}; expected one 2-D slice")
    metadata = {
        "width": int(dataset.Columns),
        "height": int(dataset.Rows),
        "mode": str(dataset.get("PhotometricInterpretation", "")),
        "format": "DICOM",
    }
    return _rescaled(stored, dataset), metadata


def plane(orientation: Any) -> str:
    """Which plane a slice with this ImageOrientationPatient lies in (a tilted gantry's axial slices
    are still axial): the patient axis its normal runs closest to."""
    row, column = np.asarray(orientation, dtype=float).reshape(2, 3)
    return PLANES[int(np.argmax(np.abs(np.cross(row, column))))]


def apply_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to float32 [0, 1] with a linear window: (hu - (level - width/2)) / width, clipped.

    This is the plain form (level - width/2 -> 0, level + width/2 -> 1), not the DICOM PS3.3
    C.11.2.1.2 one with its half-unit offsets for integer display values; the models want a
    continuous [0, 1] input, and the two differ by at most one HU, at the upper edge.
    """
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width}")
    low = level - width / 2
    windowed = (np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(width)
    return np.clip(windowed, 0.0, 1.0).astype(np.float32)


def identity(path: Path) -> dict[str, Any]:
    """Whose scan a DICOM slice is and where in it: patient, series and the slice's position along
    the scan's axis (mm; the instance number where the position is missing). Header only."""
    dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    position = np.nan
    if "ImagePositionPatient" in dataset and "ImageOrientationPatient" in dataset:
        row, column = np.asarray(dataset.ImageOrientationPatient, dtype=float).reshape(2, 3)
        position = float(np.dot(np.cross(row, column), np.asarray(dataset.ImagePositionPatient, dtype=float)))
    elif dataset.get("InstanceNumber") is not None:
        position = float(dataset.InstanceNumber)
    return {
        "patient": str(dataset.get("PatientID", "")),
        "series": str(dataset.get("SeriesInstanceUID", "")),
        "position": position,
    }


def write_ct_slice(
    path: Path,
    hu: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    photometric: str = "MONOCHROME2",
    preamble: bool = True,
    patient: str = "",
    series: str | None = None,
    position: float = 0.0,
    spacing: float = 1.0,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
) -> Path:
    """Write `hu` (2-D) as one 16-bit CT slice with stored values round((hu - intercept) / slope): how
    a volume's slices enter the slice pipeline (HU kept, windowed when read), and the tests' scans.

    The stored values are unsigned when none is negative, signed otherwise; values that fit neither
    raise ValueError rather than wrap. `series` names the volume (a UID is derived from it), `position`
    is the slice's place along the scan's axis (mm), `spacing` the pixel size (mm) and `orientation`
    the row and column directions (ImageOrientationPatient; axial by default). With `preamble=False`
    the file starts at its File Meta group, with no preamble and no "DICM" prefix, as some old
    scanners write it.
    """
    hu = np.asarray(hu, dtype=np.float64)
    if hu.ndim != 2:
        raise ValueError(f"expected a 2-D slice, got shape {hu.shape}")
    stored = np.round((hu - intercept) / slope)
    signed = bool(stored.min() < 0)
    dtype = np.dtype("<i2" if signed else "<u2")
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(f"stored values [{stored.min()}, {stored.max()}] do not fit 16 bits")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    # A volume's slice gets UIDs derived from its names: the same volume always writes the same bytes.
    key = [patient, series, repr(float(position))] if series else None
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=key)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.PatientID = patient
    for empty in ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
        dataset[empty] = pydicom.DataElement(empty, pydicom.datadict.dictionary_VR(empty), "")
    dataset.StudyDate, dataset.StudyTime, dataset.ReferringPhysicianName = "20000101", "000000", ""
    dataset.StudyInstanceUID = generate_uid(entropy_srcs=[patient]) if series else generate_uid()
    dataset.SeriesInstanceUID = generate_uid(entropy_srcs=[patient, series]) if series else generate_uid()
    dataset.FrameOfReferenceUID = (
        generate_uid(entropy_srcs=[patient, series, "frame"]) if series else generate_uid()
    )
    dataset.SeriesNumber = 1
    row, column = np.asarray(orientation, dtype=float).reshape(2, 3)
    dataset.ImageOrientationPatient = [float(v) for v in orientation]
    dataset.ImagePositionPatient = [float(v) for v in np.cross(row, column) * float(position)]
    dataset.PixelSpacing = [float(spacing), float(spacing)]
    dataset.Rows, dataset.Columns = hu.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = int(signed)
    dataset.RescaleSlope = slope
    dataset.RescaleIntercept = intercept
    dataset.RescaleType = "HU"
    dataset.PixelData = stored.astype(dtype).tobytes()

    # pydicom 3: enforce_file_format=True writes preamble + "DICM" + a validated File Meta group;
    # False writes the dataset as-is, i.e. without preamble since this Dataset has none.
    dataset.save_as(path, enforce_file_format=preamble)
    return Path(path)
