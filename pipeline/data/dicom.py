"""Read single-slice CT DICOM files as Hounsfield units and window them for the models, through one guard.

PNG/JPEG exports of CT have already been windowed by whoever exported them; DICOM keeps the
scanner's calibrated values, so this module converts them to HU and lets the config choose the window.

Every DICOM read of the pipeline goes through `read_dataset`: a file, or its deflated data set once
inflated, larger than a bound derived from `preprocess.max_pixels` (or `max_voxels` for a DICOM-SEG) is
refused before pydicom parses it, and `check_pixel_data` refuses pixel data that would not decode to the
size its header declares before any of it is decoded. `placement` validates a slice's geometry once.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import filereader
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.multival import MultiValue
from pydicom.pixels import apply_rescale
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLETransferSyntaxes,
    generate_uid,
)

from pipeline.core.config import MAX_PIXELS
from pipeline.core.errors import ImageDecodeError, describe
from pipeline.data.guards import DEFAULT_LIMITS, Limits, check_pixels, file_type

# a DICOM slice's `format` in the manifest: the one format in Hounsfield units after download (NIfTI
# volumes and DICOM series become DICOM slices)
DICOM_FORMAT = "DICOM"
HU_RANGE = (-1024.0, 3071.0)  # what a 12-bit CT stores; a volume's HU beyond are clipped
PLANES = ("sagittal", "coronal", "axial")  # by the patient axis (x, y, z) a slice's normal runs along
# PS3.10 section 7.1: a 128-byte preamble, then the 4-byte prefix "DICM".
_PREAMBLE_LENGTH = 128
_PREFIX = b"DICM"
BITS_ALLOCATED = (1, 8, 16, 32, 64)  # what DICOM pixel data may allocate a sample
# What a data set holds besides its pixel data; a DICOM-SEG's per-frame headers are the largest part.
HEADER_BYTES = 16 * 2**20
_INFLATE_CHUNK = 2**20  # deflated bytes fed to zlib at a time
# The row and column directions of a plane: the sine of their angle at least this.
_MIN_SINE = 1e-3


def slice_bytes(max_pixels: int) -> int:
    """The most a single-slice file (or its inflated data set) may hold: a slice at `max_pixels`
    (preprocess.max_pixels) at the widest BitsAllocated, plus its header."""
    return max_pixels * max(BITS_ALLOCATED) // 8 + HEADER_BYTES


def segmentation_bytes(limits: Limits) -> int:
    """The most a DICOM-SEG may hold: one byte per voxel of a volume at preprocess.max_voxels (a
    fractional SEG's frames; a binary one packs eight voxels a byte), plus its header."""
    return limits.max_voxels + HEADER_BYTES


def header_bytes(limits: Limits) -> int:
    """The most a DICOM file of either kind (a slice or a DICOM-SEG) may hold."""
    return max(slice_bytes(limits.max_pixels), segmentation_bytes(limits))


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


@contextmanager
def _reasons(name: str | Path) -> Iterator[None]:
    """pydicom's and its decoders' exceptions on a malformed file -> one ImageDecodeError naming it.

    On malformed input pydicom raises EOFError, ValueError, struct.error, KeyError, RecursionError, ...,
    and a missing decoder plugin for compressed pixel data is a RuntimeError: each means a bad file.
    """
    try:
        yield
    except ImageDecodeError:
        raise
    except OSError as err:
        raise ImageDecodeError(name, f"cannot read: {err.strerror or describe(err)}") from None
    except Exception as err:  # noqa: BLE001
        raise ImageDecodeError(name, f"cannot decode DICOM: {describe(err)}") from None


def read_dataset(source: Path | bytes, name: str | Path, max_bytes: int, *, pixels: bool = True) -> Dataset:
    """A DICOM file's data set (without its pixel data unless `pixels`), parsed only within `max_bytes`.

    A file larger than `max_bytes` is refused before it is parsed. pydicom inflates a Deflated Explicit
    VR Little Endian data set whole, even to read its header, and a few megabytes can inflate to
    gigabytes: such a data set is inflated here, at most `max_bytes` far, and refused beyond. Files
    without the preamble are read too (`is_dicom` decides what is DICOM). Raises ImageDecodeError.
    """
    in_memory = isinstance(source, (bytes, bytearray))
    with _reasons(name):
        size = len(source) if in_memory else Path(source).stat().st_size
        if size > max_bytes:
            raise ImageDecodeError(
                name,
                f"{size} bytes: more than the {max_bytes} the limits allow "
                "(preprocess.max_pixels, max_voxels)",
            )
        with io.BytesIO(source) if in_memory else _FileReader(Path(source), size) as handle:
            preamble = filereader.read_preamble(handle, force=True)
            meta = FileMetaDataset(
                filereader.read_dataset(
                    handle, is_implicit_VR=False, is_little_endian=True, stop_when=_after_file_meta
                )
            )
            if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
                handle.seek(0)
                return pydicom.dcmread(handle, stop_before_pixels=not pixels, force=True)
            inflated = _inflate(handle, name, max_bytes)
        dataset = filereader.read_dataset(
            DicomBytesIO(inflated),
            is_implicit_VR=False,
            is_little_endian=True,
            stop_when=None if pixels else _at_pixel_data,
        )
        read = FileDataset(str(name), dataset, preamble, meta, is_implicit_VR=False, is_little_endian=True)
        read.set_original_encoding(False, True, dataset.original_character_set)
        return read


class _FileReader(io.BufferedReader):
    """A file whose `read(n)` allocates no more than the file holds. pydicom reads an element's declared
    length at once, and a buffered file allocates those n bytes before reading: a corrupt length of a
    few gigabytes would be allocated for nothing."""

    def __init__(self, path: Path, size: int) -> None:
        super().__init__(io.FileIO(str(path), "rb"))
        self._size = size

    def read(self, size: int | None = -1) -> bytes:
        return super().read(size if size is None or size < 0 else min(size, self._size))


def _after_file_meta(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
    return tag in (0x7FE00008, 0x7FE00009, 0x7FE00010)  # float, double float and integer pixel data


def _inflate(handle: io.BufferedIOBase, name: str | Path, max_bytes: int) -> bytes:
    """The rest of `handle` inflated (raw deflate, PS3.5 A.5), refused as soon as it passes `max_bytes`."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts, size, pending = [], 0, b""
    while not inflater.eof and (pending := pending or handle.read(_INFLATE_CHUNK)):
        part = inflater.decompress(pending, _INFLATE_CHUNK)  # a chunk at a time: nothing held past the bound
        pending = inflater.unconsumed_tail
        size += len(part)
        if size > max_bytes:
            raise ImageDecodeError(
                name,
                f"its deflated data set inflates to more than the {max_bytes} bytes the limits allow "
                "(preprocess.max_pixels, max_voxels): a decompression bomb",
            )
        parts.append(part)
    if not inflater.eof:
        raise ImageDecodeError(name, "its deflated data set is truncated")
    return b"".join(parts)


def _count(dataset: Dataset, keyword: str, name: str | Path, default: int | None = None) -> int:
    """A count the header declares (Rows, NumberOfFrames, ...): a whole number of at least 1."""
    value = dataset.get(keyword)
    if value in (None, ""):
        if default is not None:
            return default
        raise ImageDecodeError(name, f"no {keyword} in its header")
    try:
        count = int(value)
    except (TypeError, ValueError, OverflowError):
        count = 0
    if count < 1 or count != value:
        raise ImageDecodeError(name, f"{keyword} is {value!r}; expected a whole number of at least 1")
    return count


def frame_size(dataset: Dataset, name: str | Path) -> tuple[int, int]:
    """(rows, columns) of the header's frames, validated."""
    return _count(dataset, "Rows", name), _count(dataset, "Columns", name)


def check_pixel_data(dataset: Dataset, name: str | Path, max_pixels: int, max_frames: int = 1) -> None:
    """Refuse pixel data that would decode to more, or to another size, than its header declares,
    before any of it is decoded: frames of more than `max_pixels`, more than `max_frames` frames, native
    data of another length than Rows x Columns x BitsAllocated x SamplesPerPixel x frames, a compressed
    frame whose codestream declares another size (a few kilobytes can declare gigapixels)."""
    rows, columns = frame_size(dataset, name)
    check_pixels(name, columns, rows, max_pixels)
    frames = _count(dataset, "NumberOfFrames", name, default=1)
    if frames > max_frames:
        raise ImageDecodeError(name, f"{frames} frames; expected at most {max_frames}")
    samples = _count(dataset, "SamplesPerPixel", name, default=1)
    bits = _count(dataset, "BitsAllocated", name)
    if bits not in BITS_ALLOCATED:
        raise ImageDecodeError(name, f"BitsAllocated is {bits}; expected one of {BITS_ALLOCATED}")
    syntax = getattr(dataset, "file_meta", FileMetaDataset()).get("TransferSyntaxUID")
    try:
        encapsulated = syntax is not None and UID(syntax).is_encapsulated
    except ValueError:
        raise ImageDecodeError(name, f"TransferSyntaxUID {syntax} is not a transfer syntax") from None
    if not encapsulated:
        length = len(dataset.PixelData or b"")
        expected = (rows * columns * frames * samples * bits + 7) // 8
        if length not in (expected, expected + expected % 2):  # an odd length is padded to even
            layout = f"{columns}x{rows} pixels" + (f" x {frames} frames" if frames > 1 else "")
            layout += f" x {samples} samples" if samples > 1 else ""
            raise ImageDecodeError(
                name,
                f"its pixel data holds {length} bytes where {layout} of {bits} bits need {expected}: "
                "truncated or corrupt",
            )
        return
    kind = UID(syntax).name
    rle = syntax in RLETransferSyntaxes
    if not rle and syntax not in _FRAME_HEADER_READERS:
        raise ImageDecodeError(
            name, f"pixel data compressed as {kind}: not supported (JPEG, JPEG-LS, JPEG 2000 and RLE are)"
        )
    for index, frame in enumerate(generate_frames(dataset.PixelData, number_of_frames=frames), 1):
        which = f"frame {index}'s" if frames > 1 else "its"
        if rle:
            # RLE decodes into an array sized from Rows, Columns and BitsAllocated (checked above), but
            # pydicom's decoder first expands each segment whole: up to 64 times its own length.
            if _rle_overflows(memoryview(frame), rows * columns):
                raise ImageDecodeError(
                    name, f"{which} RLE data decodes to more than its header's {columns}x{rows} pixels"
                )
            continue
        size = _FRAME_HEADER_READERS[syntax](frame)
        if size is None:
            raise ImageDecodeError(name, f"{which} {kind} data has no frame header: corrupt")
        width, height, components = size
        if (width, height) != (columns, rows):
            raise ImageDecodeError(
                name,
                f"{which} {kind} data is {width}x{height} pixels where its header declares {columns}x{rows}: "
                "corrupt or crafted, not decoded",
            )
        if components != samples:
            raise ImageDecodeError(
                name,
                f"{which} {kind} data has {components} components where its header declares {samples} "
                "sample(s) per pixel: corrupt or crafted, not decoded",
            )


# JPEG's start-of-frame markers SOF0-SOF15 (not DHT C4, JPG C8, DAC CC), and JPEG-LS's SOF55 (F7).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _jpeg_size(frame: bytes) -> tuple[int, int, int] | None:
    """(columns, rows, components) from a JPEG or JPEG-LS frame header (ITU T.81 B.2.2, T.87 C.2.2);
    None when there is none before the first scan."""
    if frame[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 4 <= len(frame) and frame[position] == 0xFF:
        marker = frame[position + 1]
        if marker == 0xFF:  # a fill byte
            position += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            position += 2
        elif marker in (0xD9, 0xDA):  # EOI, SOS: no frame header came before
            return None
        elif marker in _SOF_MARKERS:
            header = frame[position + 4 : position + 10]  # precision, rows, columns, components
            if len(header) < 6:
                return None
            _, rows, columns, components = struct.unpack(">BHHB", header)
            return columns, rows, components
        else:
            position += 2 + int.from_bytes(frame[position + 2 : position + 4], "big")
    return None


def _j2k_size(frame: bytes) -> tuple[int, int, int] | None:
    """(columns, rows, components) from a JPEG 2000 or HTJ2K codestream's SIZ marker (ITU T.800 A.5.1),
    also inside a JP2 file's contiguous-codestream box; None when there is none."""
    codestream = _jp2_codestream(frame) if frame.startswith(_JP2_SIGNATURE) else frame
    if codestream is None or codestream[:4] != b"\xff\x4f\xff\x51" or len(codestream) < 4 + 38:
        return None
    width, height, left, top = struct.unpack(">4L", codestream[8:24])
    (components,) = struct.unpack(">H", codestream[40:42])
    return width - left, height - top, components


def _jp2_codestream(data: bytes) -> bytes | None:
    """The contents of a JP2 file's 'jp2c' box (ISO 15444-1 I.5), or None."""
    position = 0
    while position + 8 <= len(data):
        length, kind = struct.unpack(">L4s", data[position : position + 8])
        start = 8
        if length == 1:  # an extended 64-bit length follows
            (length,) = struct.unpack(">Q", data[position + 8 : position + 16].rjust(8, b"\x00"))
            start = 16
        elif length == 0:  # the box runs to the end
            length = len(data) - position
        if kind == b"jp2c":
            return data[position + start : position + length]
        if length < start:
            return None
        position += length
    return None


def _rle_overflows(frame: memoryview, pixels: int) -> bool:
    """True when a segment of an RLE frame (PS3.5 G.3) decodes to more than `pixels` bytes, and a run of
    padding (pydicom reads past such padding); counted without decoding, and no further than that."""
    limit = pixels + 128
    if len(frame) < 64:
        return False  # no RLE header: pydicom refuses it
    count, *offsets = struct.unpack("<16L", frame[:64])
    starts = offsets[: min(count, 15)]
    for start, end in zip(starts, [*starts[1:], len(frame)], strict=True):
        segment, decoded, position = frame[start:end], 0, 0
        while position < len(segment) and decoded <= limit:
            control = segment[position]
            if control < 128:  # a literal run of control + 1 bytes
                decoded += min(control + 1, len(segment) - position - 1)
                position += control + 2
            elif control > 128:  # one byte repeated 257 - control times
                decoded += 257 - control
                position += 2
            else:
                position += 1
        if decoded > limit:
            return True
    return False


# How each compressed transfer syntax declares a frame's size, read before the frame is decoded.
_FRAME_HEADER_READERS: dict[str, Callable[[bytes], tuple[int, int, int] | None]] = {
    **dict.fromkeys(JPEG2000TransferSyntaxes, _j2k_size),
    **dict.fromkeys([*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes], _jpeg_size),
}


@dataclass(frozen=True)
class Placement:
    """Where a slice lies in the patient (DICOM's LPS, mm), from its header; None for what it lacks."""

    orientation: np.ndarray | None  # (2, 3): the row and column directions (ImageOrientationPatient)
    position: np.ndarray | None  # (3,): the first pixel's centre (ImagePositionPatient)
    spacing: np.ndarray | None  # (2,): between rows, between columns (PixelSpacing)

    @property
    def normal(self) -> np.ndarray | None:
        return None if self.orientation is None else np.cross(*self.orientation)

    @property
    def plane(self) -> str | None:
        """Which plane the slice lies in (a tilted gantry's axial slices are still axial): the patient
        axis its normal runs closest to."""
        normal = self.normal
        return None if normal is None else PLANES[int(np.argmax(np.abs(normal)))]

    @property
    def complete(self) -> bool:
        return self.orientation is not None and self.position is not None and self.spacing is not None


def placement(dataset: Dataset, name: str | Path) -> Placement:
    """A slice's geometry, validated: ImageOrientationPatient 6 finite values whose row and column
    directions span a plane, ImagePositionPatient 3 finite values, PixelSpacing 2 finite positive ones.
    A missing attribute is None; a malformed one raises ImageDecodeError."""
    orientation = _numbers(dataset, "ImageOrientationPatient", 6, name)
    if orientation is not None:
        row, column = orientation = orientation.reshape(2, 3)
        spanned = np.linalg.norm(np.cross(row, column))  # |row| |column| sin(their angle)
        if not spanned > _MIN_SINE * np.linalg.norm(row) * np.linalg.norm(column):
            raise ImageDecodeError(
                name,
                "ImageOrientationPatient does not describe a plane (its row and column directions are "
                "zero or parallel)",
            )
    spacing = _numbers(dataset, "PixelSpacing", 2, name)
    if spacing is not None and not (spacing > 0).all():
        raise ImageDecodeError(
            name, f"PixelSpacing is {_shown(spacing)}; expected two positive millimetre values"
        )
    return Placement(orientation, _numbers(dataset, "ImagePositionPatient", 3, name), spacing)


def _numbers(dataset: Dataset, keyword: str, count: int, name: str | Path) -> np.ndarray | None:
    """`count` finite numbers the header holds under `keyword`, or None where it has none."""
    value = dataset.get(keyword)
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    if value is None or value == "" or not values:
        return None
    wanted = "a finite number" if count == 1 else f"{count} finite numbers"
    if len(values) != count:
        plural = "s" if len(values) != 1 else ""
        raise ImageDecodeError(name, f"{keyword} has {len(values)} value{plural}; expected {count}")
    try:
        numbers = np.array([float(v) for v in values])
    except (TypeError, ValueError):
        raise ImageDecodeError(name, f"{keyword} is {value!r}; expected {wanted}") from None
    if not np.isfinite(numbers).all():
        raise ImageDecodeError(name, f"{keyword} is {_shown(numbers)}; expected {wanted}")
    return numbers


def _shown(numbers: np.ndarray) -> str:
    return "\\".join(f"{v:g}" for v in numbers)


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
    from its header, before its pixel data is decoded (`read_dataset`, `check_pixel_data`). MONOCHROME1
    slices display low values as white, but that inversion belongs to display: HU come from the modality
    LUT alone, so both photometric interpretations give the same HU and nothing is inverted here.

    Raises ImageDecodeError for anything that is not a decodable single-frame grayscale slice.
    """
    with _reasons(name):
        return _read_hounsfield(source, name, max_pixels)


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
    dataset = read_dataset(source, name, slice_bytes(max_pixels))
    if "PixelData" not in dataset:
        raise ImageDecodeError(name, "no DICOM pixel data")
    facing = placement(dataset, name).plane
    if facing not in (None, "axial"):
        raise ImageDecodeError(
            name, f"a {facing} slice: the detector reads axial slices (reformat the scan axially)"
        )
    frames = _count(dataset, "NumberOfFrames", name, default=1)
    if frames > 1:
        raise ImageDecodeError(name, f"multi-frame DICOM ({frames} frames); expected one slice")
    samples = _count(dataset, "SamplesPerPixel", name, default=1)
    if samples != 1:
        raise ImageDecodeError(name, f"colour DICOM ({samples} samples per pixel); expected grayscale")
    check_pixel_data(dataset, name, max_pixels)
    slope = _numbers(dataset, "RescaleSlope", 1, name)
    _numbers(dataset, "RescaleIntercept", 1, name)
    if slope is not None and slope[0] == 0:
        raise ImageDecodeError(name, "RescaleSlope is 0: its values do not map to Hounsfield units")
    stored = dataset.pixel_array  # a missing decoder plugin for compressed data raises here
    if stored.shape != frame_size(dataset, name):
        raise ImageDecodeError(name, f"pixel data has shape {stored.shape}; expected one 2-D slice")
    metadata = {
        "width": int(dataset.Columns),
        "height": int(dataset.Rows),
        "mode": str(dataset.get("PhotometricInterpretation", "")),
        "format": DICOM_FORMAT,
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


def identity(path: Path, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Whose scan a DICOM slice is and where in it: patient, series and the slice's position along
    the scan's axis (mm; the instance number where the position is missing). Header only; raises
    ImageDecodeError for a file `read_dataset` refuses or a malformed geometry (`placement`)."""
    with _reasons(path):
        dataset = read_dataset(path, path, header_bytes(limits), pixels=False)
        return {
            "patient": str(dataset.get("PatientID", "")),
            "series": str(dataset.get("SeriesInstanceUID", "")),
            "position": scan_position(dataset, path),
        }


def scan_position(dataset: Dataset, name: str | Path) -> float:
    """A slice's position along its scan's axis (mm), the instance number where the position is missing,
    NaN without either; ImageDecodeError for a malformed geometry (`placement`)."""
    where = placement(dataset, name)
    if where.position is not None and where.normal is not None:
        return float(np.dot(where.normal, where.position))
    return float(dataset.InstanceNumber) if dataset.get("InstanceNumber") is not None else np.nan


def write_ct_slice(
    path: Path | io.BytesIO,
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
) -> Path | io.BytesIO:
    """Write `hu` (2-D) as one 16-bit CT slice with stored values round((hu - intercept) / slope): how
    a volume's slices enter the slice pipeline (HU kept, windowed when read), and the tests' scans.

    The stored values are unsigned when none is negative, signed otherwise; values that fit neither
    raise ValueError rather than wrap. `series` names the volume (a UID is derived from it), `position`
    is the slice's place along the scan's axis (mm), `spacing` the pixel size (mm) and `orientation`
    the row and column directions (ImageOrientationPatient; axial by default). With `preamble=False`
    the file starts at its File Meta group, with no preamble and no "DICM" prefix, as some old
    scanners write it. `path` may be a BytesIO, which is returned, written.
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
    return path if isinstance(path, io.BytesIO) else Path(path)
