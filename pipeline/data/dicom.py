"""Read single-slice CT DICOM files as Hounsfield units and window them for the models.

PNG/JPEG exports of CT have already been windowed by whoever exported them; DICOM keeps the
scanner's calibrated values, so this module converts them to HU and lets the config choose the window.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_rescale

from pipeline.errors import ImageDecodeError

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


def read_hounsfield(source: Path | bytes, name: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one CT slice to a float32 (rows, columns) array in HU, plus metadata for the manifest.

    `name` is what errors name: the path, or a display name when `source` is bytes (its `.dcm`
    suffix also admits a file without preamble). MONOCHROME1 slices display low values as white, but
    that inversion belongs to display: HU come from the modality LUT alone, so both photometric
    interpretations give the same HU and nothing is inverted here.

    Raises ImageDecodeError for anything that is not a decodable single-frame grayscale slice.
    """
    try:
        return _read_hounsfield(source, name)
    except ImageDecodeError:
        raise
    except OSError as err:
        raise ImageDecodeError(name, f"cannot read: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001
        # On malformed input pydicom raises EOFError, ValueError, struct.error, KeyError, ..., and a
        # missing decoder plugin for compressed pixel data is a RuntimeError: each means a bad file.
        raise ImageDecodeError(name, "cannot decode DICOM: " + " ".join(str(err).split())) from None


def _read_hounsfield(source: Path | bytes, name: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """`read_hounsfield` without the translation of pydicom's exceptions."""
    prefixed = _has_prefix(_head(source))
    in_memory = isinstance(source, (bytes, bytearray))
    if not prefixed and not _has_dcm_suffix(name if in_memory else source):
        raise ImageDecodeError(name, "not a DICOM file (no 'DICM' prefix after the 128-byte preamble)")
    # force=True only for the preamble-less .dcm: otherwise pydicom rejects what is not Part-10.
    dataset = pydicom.dcmread(io.BytesIO(source) if in_memory else Path(source), force=not prefixed)
    if "PixelData" not in dataset:
        raise ImageDecodeError(name, "no DICOM pixel data")
    frames = int(dataset.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageDecodeError(name, f"multi-frame DICOM ({frames} frames); expected one slice")
    samples = int(dataset.get("SamplesPerPixel") or 1)
    if samples != 1:
        raise ImageDecodeError(name, f"colour DICOM ({samples} samples per pixel); expected grayscale")
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
