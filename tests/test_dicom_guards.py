"""Hostile DICOM files: every read goes through one guard, so a deflate bomb, a codestream larger than
its header, a malformed geometry or a series too large for the limits is one ImageDecodeError naming the
file (or a refused series), decided before anything large is inflated, decoded or allocated."""

from __future__ import annotations

import io
import math
import re
import struct
import tempfile
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    MPEG2MPML,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from pipeline.core.errors import ImageDecodeError, describe
from pipeline.data.dicom import (
    HEADER_BYTES,
    identity,
    read_hounsfield,
    slice_bytes,
    write_ct_slice,
)
from pipeline.data.guards import Limits
from pipeline.data.images import decode
from pipeline.data.series import find_series, read_header, read_segmentation, write_segmentation
from pipeline.inputs.collect import InputFile, find_scans
from tests.conftest import preprocess_config
from tests.volume_factory import edited_dicom, head_volume, write_series

CONFIG = preprocess_config(32)
SMALL = Limits(max_pixels=64 * 64, max_voxels=64 * 64 * 8)  # bounds: HEADER_BYTES and a few kilobytes
SMALL_CONFIG = CONFIG.model_copy(update={"max_pixels": SMALL.max_pixels, "max_voxels": SMALL.max_voxels})
EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MB = 2**20


def _hu() -> np.ndarray:
    """A 32 x 32 slice in HU: brain tissue in air, something to score."""
    hu = np.full((32, 32), -1000.0)
    hu[6:26, 6:26] = 40.0
    return hu


def _deflated(path: Path) -> Path:
    """A CT slice written deflated, by pydicom's own deflate writing."""
    write_ct_slice(path, _hu())
    return edited_dicom(
        path, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", DeflatedExplicitVRLittleEndian)
    )


def _deflate_bomb(path: Path, megabytes: int) -> Path:
    """A deflated CT slice's File Meta, then a data set of `megabytes` MB of zeros deflated to about 1 KB
    a megabyte: a segment compressed after a full flush is the same each time, so it is repeated."""
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, pydicom.dcmread(_deflated(path)).file_meta, enforce_standard=True)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    segment = deflater.compress(bytes(MB)) + deflater.flush(zlib.Z_FULL_FLUSH)
    path.write_bytes(buffer.getvalue() + segment * megabytes + deflater.flush())
    return path


def _reason(source: Path, config=CONFIG) -> str:
    with pytest.raises(ImageDecodeError) as raised:
        decode(source, config)
    assert raised.value.path == source
    return raised.value.reason


def _peak(action: Callable[[], object]) -> int:
    """The most memory (bytes) Python and numpy held at once during `action`."""
    tracemalloc.start()
    try:
        action()
    except ImageDecodeError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# 1. Deflated data sets are inflated within a bound, by the guard, never whole by pydicom.


def test_a_deflated_slice_reads_like_the_plain_one(tmp_path: Path) -> None:
    path = _deflated(tmp_path / "deflated.dcm")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    hounsfield, metadata = read_hounsfield(path, path)
    np.testing.assert_array_equal(hounsfield, _hu())
    np.testing.assert_array_equal(read_hounsfield(path.read_bytes(), "upload.dcm")[0], _hu())
    assert metadata["height"] == 32 and identity(path)["position"] == 0.0
    assert read_header(path).Rows == 32 and "PixelData" not in read_header(path)


def test_a_deflate_bomb_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    path = _deflate_bomb(tmp_path / "bomb.dcm", 64)  # 64 KB that inflate to 64 MB
    bound = slice_bytes(SMALL.max_pixels)
    assert _reason(path, SMALL_CONFIG) == (
        f"its deflated data set inflates to more than the {bound} bytes the limits allow "
        "(preprocess.max_pixels, max_voxels): a decompression bomb"
    )
    assert _peak(lambda: decode(path, SMALL_CONFIG)) < bound + 4 * MB
    assert _peak(lambda: find_series([path], SMALL)) < bound + 4 * MB
    assert find_series([path], SMALL)[1] == [path]  # not a series' slice: scored alone, it is refused


def test_a_one_megabyte_deflated_file_that_inflates_beyond_the_bound_is_refused(tmp_path: Path) -> None:
    path = _deflate_bomb(tmp_path / "bomb.dcm", 1024)  # inflates to 1 GB
    assert path.stat().st_size < 1.2 * MB
    assert _reason(path).startswith(
        f"its deflated data set inflates to more than the {slice_bytes(CONFIG.max_pixels)} bytes"
    )


def test_a_truncated_deflated_file_is_refused(tmp_path: Path) -> None:
    path = _deflated(tmp_path / "cut.dcm")
    path.write_bytes(path.read_bytes()[:-200])
    assert _reason(path) == "its deflated data set is truncated"


def test_a_file_larger_than_a_slice_at_the_limit_is_refused_unread(tmp_path: Path) -> None:
    path = write_ct_slice(tmp_path / "large.dcm", _hu())
    with path.open("ab") as handle:
        handle.truncate(slice_bytes(SMALL.max_pixels) + 1)
    assert _reason(path, SMALL_CONFIG).endswith(
        f"bytes: more than the {slice_bytes(4096)} the limits allow (preprocess.max_pixels, max_voxels)"
    )


# 2. Compressed pixel data: each frame's codestream header must declare the header's size.


def _j2k(pixels: np.ndarray, jp2: bool = False) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint16)).save(buffer, "JPEG2000", irreversible=False, no_jp2=not jp2)
    return buffer.getvalue()


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _jpeg_ls(pixels: np.ndarray) -> bytes:
    import jpeg_ls  # pyjpegls, pydicom's JPEG-LS decoder

    return bytes(jpeg_ls.encode(pixels.astype(np.uint16)))


def _compressed(path: Path, syntax: str, frame: bytes) -> Path:
    """The CT slice at `path` with its pixel data replaced by one compressed frame."""

    def compress(dataset: pydicom.Dataset) -> None:
        dataset.file_meta.TransferSyntaxUID = syntax
        dataset.PixelData = encapsulate([frame])
        dataset["PixelData"].VR = "OB"

    return edited_dicom(path, compress)


def test_a_jpeg_2000_slice_decodes_to_its_hounsfield_units(tmp_path: Path) -> None:
    for jp2 in (False, True):
        path = write_ct_slice(tmp_path / f"j2k{jp2}.dcm", _hu())
        _compressed(path, JPEG2000Lossless, _j2k(pydicom.dcmread(path).pixel_array, jp2))
        np.testing.assert_array_equal(read_hounsfield(path, path)[0], _hu())


@pytest.mark.parametrize(
    ("syntax", "encode"),
    [
        (JPEG2000Lossless, _j2k),
        (JPEG2000Lossless, lambda pixels: _j2k(pixels, jp2=True)),
        (JPEGBaseline8Bit, _jpeg),
        (JPEGLSLossless, _jpeg_ls),
    ],
    ids=["j2k", "jp2", "jpeg", "jpeg-ls"],
)
def test_a_codestream_larger_than_its_header_is_refused_undecoded(
    syntax: str, encode: Callable[[np.ndarray], bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _compressed(write_ct_slice(tmp_path / "crafted.dcm", _hu()), syntax, encode(np.zeros((600, 500))))
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(lambda self: pytest.fail("decoded")))
    assert _reason(path).endswith(
        "data is 500x600 pixels where its header declares 32x32: corrupt or crafted, not decoded"
    )


def _rle_frame(segments: list[bytes]) -> bytes:
    """An RLE frame (PS3.5 G.3): a 64-byte header of segment offsets, then the segments."""
    offsets = np.cumsum([64] + [len(segment) for segment in segments[:-1]]).tolist()
    return struct.pack("<16L", len(segments), *offsets, *[0] * (15 - len(segments))) + b"".join(segments)


def test_an_rle_slice_decodes_and_an_rle_segment_expanding_beyond_its_header_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = edited_dicom(write_ct_slice(tmp_path / "rle.dcm", _hu()), lambda ds: ds.compress(RLELossless))
    np.testing.assert_array_equal(read_hounsfield(good, good)[0], _hu())
    repeats = b"\x81\x00" * 4000  # each pair: one byte 128 times, 500 KB in all
    path = _compressed(
        write_ct_slice(tmp_path / "bomb.dcm", _hu()), RLELossless, _rle_frame([repeats, b"\x00\x00"])
    )
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(lambda self: pytest.fail("decoded")))
    assert _reason(path) == "its RLE data decodes to more than its header's 32x32 pixels"


def test_pixel_data_in_a_compression_without_a_size_check_is_refused(tmp_path: Path) -> None:
    path = _compressed(write_ct_slice(tmp_path / "video.dcm", _hu()), MPEG2MPML, b"\x00\x00\x01\xb3")
    assert _reason(path).startswith("pixel data compressed as MPEG2 Main Profile / Main Level: not supported")


def test_native_pixel_data_of_another_size_than_its_header_is_refused(tmp_path: Path) -> None:
    path = edited_dicom(write_ct_slice(tmp_path / "short.dcm", _hu()), lambda ds: setattr(ds, "Rows", 64))
    assert _reason(path) == (
        "its pixel data holds 2048 bytes where 32x64 pixels of 16 bits need 4096: truncated or corrupt"
    )


# 3. Geometry: validated once; a slice with a malformed one is never part of a series.


def _slices(count: int) -> np.ndarray:
    return np.transpose(head_volume(32, count), (2, 0, 1))


def _raw(keyword: str, text: bytes) -> Callable[[pydicom.Dataset], None]:
    """Store `text` as the value of `keyword` unchecked, as a hostile file would."""
    tag = tag_for_keyword(keyword)
    return lambda ds: ds.__setitem__(tag, RawDataElement(tag, "DS", len(text), text, 0, False, True))


def _set(keyword: str, value: object) -> Callable[[pydicom.Dataset], None]:
    return lambda ds: setattr(ds, keyword, value)


PLANE = (
    "ImageOrientationPatient does not describe a plane (its row and column directions are zero or parallel)"
)
MALFORMED = {
    "spacing-1": (_set("PixelSpacing", [0.8]), "PixelSpacing has 1 value; expected 2"),
    "spacing-0": (
        _set("PixelSpacing", [0, 0.8]),
        "PixelSpacing is 0\\0.8; expected two positive millimetre values",
    ),
    "iop-5": (
        _set("ImageOrientationPatient", [1, 0, 0, 0, 1]),
        "ImageOrientationPatient has 5 values; expected 6",
    ),
    "iop-nan": (
        _raw("ImageOrientationPatient", b"nan\\0\\0\\0\\1\\0 "),
        "ImageOrientationPatient is nan\\0\\0\\0\\1\\0; expected 6 finite numbers",
    ),
    "ipp-2": (_set("ImagePositionPatient", [0, 0]), "ImagePositionPatient has 2 values; expected 3"),
    "iop-zero": (_set("ImageOrientationPatient", [0] * 6), PLANE),
    "iop-parallel": (_set("ImageOrientationPatient", [1, 0, 0, 1, 0, 0]), PLANE),
}


@pytest.mark.parametrize(("edit", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_a_slice_with_a_malformed_geometry_is_an_error_and_the_rest_of_its_series_is_found(
    edit: Callable[[pydicom.Dataset], None], reason: str, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "ct", _slices(4))
    bad = edited_dicom(files[2], edit)
    (series,), rest, refused = find_series(files)
    assert series.files == tuple(f for f in files if f != bad) and rest == [bad] and refused == {}
    assert _reason(bad) == reason
    with pytest.raises(ImageDecodeError, match=re.escape(reason)):
        identity(bad)
    inputs = [InputFile(file, file.name, Path(file.name)) for file in files]
    scans, singles, refused_orders = find_scans(inputs, list(range(4)), Limits())
    assert [scan.orders for scan in scans] == [[0, 1, 3]] and singles == [2] and refused_orders == {}


def test_a_slice_without_geometry_is_still_read_alone(tmp_path: Path) -> None:
    def strip(dataset: pydicom.Dataset) -> None:
        for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
            delattr(dataset, keyword)

    path = edited_dicom(write_ct_slice(tmp_path / "bare.dcm", _hu()), strip)
    np.testing.assert_array_equal(read_hounsfield(path, path)[0], _hu())


# 4. A series whose headers declare more than the limits is refused, from its headers.


def test_a_series_above_max_pixels_or_max_voxels_is_refused_with_the_reason(tmp_path: Path) -> None:
    files = write_series(tmp_path / "ct", _slices(3)[:, :24])
    assert find_series(files, Limits(max_pixels=32 * 24 - 1)) == (
        [],
        [],
        dict.fromkeys(files, "32x24 pixels is above preprocess.max_pixels (767)"),
    )
    reason = "one of 3 slices of 32x24 pixels: their 2304 voxels are above preprocess.max_voxels (2303)"
    assert find_series(files, Limits(max_voxels=32 * 24 * 3 - 1))[2] == dict.fromkeys(files, reason)
    inputs = [InputFile(file, file.name, Path(file.name)) for file in files]
    assert find_scans(inputs, [0, 1, 2], Limits(max_voxels=2303)) == ([], [], dict.fromkeys(range(3), reason))


def test_a_series_whose_headers_claim_30000_pixels_a_side_is_refused_unread(tmp_path: Path) -> None:
    files = write_series(tmp_path / "ct", _slices(3))
    for file in files:
        edited_dicom(file, lambda ds: (setattr(ds, "Rows", 30000), setattr(ds, "Columns", 30000)))
    series, rest, refused = find_series(files)
    assert series == [] and rest == []
    assert set(refused.values()) == {"30000x30000 pixels is above preprocess.max_pixels (16777216)"}


# 5. DICOM-SEG files are read through the same guard.


def test_a_deflated_segmentation_reads_back_and_a_deflate_bomb_segmentation_is_refused(
    tmp_path: Path,
) -> None:
    files = write_series(tmp_path / "ct", _slices(3))
    (series,), _, _ = find_series(files)
    mask = np.zeros((3, 32, 32), dtype=bool)
    mask[1, 4:9, 5:7] = True
    path = tmp_path / "seg.dcm"
    write_segmentation(series, mask, path, "test")
    edited_dicom(path, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", DeflatedExplicitVRLittleEndian))
    np.testing.assert_array_equal(read_segmentation(path, series), mask)
    bomb = _deflate_bomb(tmp_path / "bomb.seg.dcm", 64)
    with pytest.raises(ImageDecodeError, match="inflates to more than"):
        read_segmentation(bomb, series, SMALL)
    assert _peak(lambda: read_segmentation(bomb, series, SMALL)) < SMALL.max_voxels + HEADER_BYTES + 4 * MB


# 6. Every reason says something.


def test_an_exception_without_a_message_is_named_by_its_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_ct_slice(tmp_path / "slice.dcm", _hu())

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(pydicom, "dcmread", out_of_memory)
    assert _reason(path) == "cannot decode DICOM: MemoryError"
    assert describe(KeyError()) == "KeyError" and describe(ValueError("a\n  b")) == "a b"


# 7. Whatever a header says, a slice is read or refused: never another exception, never a large allocation.

KEYWORDS = [
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "NumberOfFrames", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "RescaleSlope",
    "RescaleIntercept", "PhotometricInterpretation",
]  # fmt: skip
WRONG_VRS = ["US", "SS", "UL", "SL", "FL", "FD", "DS", "IS", "CS", "LO", "OB", "UN"]
_INTEGER_FORMATS = {"US": "<H", "SS": "<H", "UL": "<L", "SL": "<L"}  # signed values wrap into the same bytes
NUMBERS = st.one_of(
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, -1, 1, 8, 16, 32, 64, 2**15, 2**16 - 1, 2**31, 2**32 - 1, 30000]),
    st.floats(),  # NaN and infinities included
)
WORDS = st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL_422", "", "x" * 70])
SYNTAXES = [str(syntax) for syntax in AllTransferSyntaxes] + ["1.2.3", "", "not a uid"]


def _encoded(vr: str, values: list) -> bytes:
    """`values` as a value of VR `vr` would store them (wrapped, cut or spelled out where they do not fit)."""
    numbers = [v if isinstance(v, int) or math.isfinite(v) else 0 for v in values if not isinstance(v, str)]
    if vr in _INTEGER_FORMATS:
        bits = struct.calcsize(_INTEGER_FORMATS[vr]) * 8
        return b"".join(struct.pack(_INTEGER_FORMATS[vr], int(v) % 2**bits) for v in numbers)
    if vr in ("FL", "FD"):
        dtype = "<f4" if vr == "FL" else "<f8"
        return b"".join(np.asarray(v, dtype=dtype).tobytes() for v in values if not isinstance(v, str))
    raw = bytes(int(v) % 256 for v in numbers) if vr in ("OB", "UN") else "\\".join(map(str, values)).encode()
    return raw + b" " * (len(raw) % 2)


@st.composite
def _header_edits(draw: st.DrawFn) -> tuple[str, str, bytes]:
    keyword = draw(st.sampled_from(KEYWORDS))
    vr = draw(st.sampled_from([dictionary_VR(keyword)] * 4 + WRONG_VRS))  # mostly the right VR
    values = draw(st.lists(st.one_of(NUMBERS, WORDS) if vr in ("CS", "LO") else NUMBERS, max_size=7))
    return keyword, vr, _encoded(vr, values)


def _with_syntax(data: bytes, syntax: str) -> bytes:
    """The file with another TransferSyntaxUID in its File Meta, its data set left as it is."""
    at = data.index(b"\x02\x00\x10\x00UI")
    (length,) = struct.unpack("<H", data[at + 6 : at + 8])
    value = syntax.encode() + b"\x00" * (len(syntax) % 2)
    return data[: at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + length :]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns of each oddity it reads past
@EXAMPLES
@given(
    edits=st.lists(_header_edits(), max_size=3),
    deflated=st.booleans(),
    syntax=st.none() | st.sampled_from(SYNTAXES),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=4),
    cut=st.none() | st.integers(0, 3000),
)
def test_any_broken_header_is_read_or_refused_within_the_limits(
    edits: list[tuple[str, str, bytes]],
    deflated: bool,
    syntax: str | None,
    flips: list[tuple[int, int]],
    cut: int | None,
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        good = [write_ct_slice(Path(folder, f"{i}.dcm"), _hu(), series="s", position=i) for i in range(2)]
        path = write_ct_slice(Path(folder, "broken.dcm"), _hu(), series="s", position=5)
        dataset = pydicom.dcmread(path)
        for keyword, vr, raw in edits:
            tag = tag_for_keyword(keyword)
            dataset[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
        if deflated:
            dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        dataset.save_as(path, enforce_file_format=True)
        data = bytearray(path.read_bytes() if syntax is None else _with_syntax(path.read_bytes(), syntax))
        for at, mask in flips:
            data[at % len(data)] ^= mask
        path.write_bytes(bytes(data[:cut]))

        tracemalloc.start()
        try:
            try:
                decoded = decode(path, SMALL_CONFIG)
            except ImageDecodeError as err:
                assert err.path == path and err.reason
            else:
                assert decoded.pixels.dtype == np.float32 and np.isfinite(decoded.pixels).all()
                assert decoded.pixels.shape == (decoded.height, decoded.width)
            series, rest, refused = find_series([*good, path], SMALL)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert sum(len(found.files) for found in series) + len(rest) + len(refused) == 3
        assert peak < 4 * MB  # the slice is 2 KB; SMALL's bound is HEADER_BYTES, and nothing comes near it
