"""DICOM reading: exact HU from the modality LUT, the CT window, and every bad file as ImageDecodeError."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

from pipeline.core.errors import ImageDecodeError
from pipeline.data.dicom import apply_window, is_dicom, read_hounsfield, write_ct_slice
from tests.volume_factory import edited_dicom

# Air, water, brain, bone, and values either side of the brain window.
HU = np.array([[-1024, -1000, 0, 40], [80, 1000, 3071, -2]], dtype=np.float32)
# Even offsets from -1000, so slope 2 intercept -1000 stores them exactly.
HU_EVEN = np.array([[-1000, -998, 0, 40], [80, 1000, 3000, -2]], dtype=np.float32)


@pytest.mark.parametrize(
    ("slope", "intercept", "hu"),
    [
        (1.0, -1024.0, HU),
        (2.0, -1000.0, HU_EVEN),
        (1.0, 0.0, HU),  # negative stored values: signed pixel representation
    ],
    ids=["slope1-intercept-1024", "slope2-intercept-1000", "signed"],
)
def test_hounsfield_units_are_exact(tmp_path: Path, slope: float, intercept: float, hu: np.ndarray) -> None:
    path = write_ct_slice(tmp_path / "slice.dcm", hu, slope=slope, intercept=intercept)
    values, metadata = read_hounsfield(path, path)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, hu)
    assert metadata == {"width": hu.shape[1], "height": hu.shape[0], "mode": "MONOCHROME2", "format": "DICOM"}


def test_stored_values_follow_slope_and_intercept(tmp_path: Path) -> None:
    path = write_ct_slice(tmp_path / "slice.dcm", HU_EVEN, slope=2.0, intercept=-1000.0)
    dataset = pydicom.dcmread(path)
    np.testing.assert_array_equal(dataset.pixel_array, (HU_EVEN + 1000) / 2)


def test_missing_rescale_tags_default_to_slope_1_intercept_0(tmp_path: Path) -> None:
    path = write_ct_slice(tmp_path / "slice.dcm", HU, intercept=-1024.0)
    dataset = pydicom.dcmread(path)
    del dataset.RescaleSlope  # pydicom's apply_rescale alone would then ignore the intercept
    dataset.save_as(path, enforce_file_format=True)
    values, _ = read_hounsfield(path, path)
    np.testing.assert_array_equal(values, HU)
    del dataset.RescaleIntercept
    dataset.save_as(path, enforce_file_format=True)
    values, _ = read_hounsfield(path, path)
    np.testing.assert_array_equal(values, HU + 1024)


def test_monochrome1_gives_the_same_hounsfield_units(tmp_path: Path) -> None:
    path = write_ct_slice(tmp_path / "slice.dcm", HU, photometric="MONOCHROME1")
    values, metadata = read_hounsfield(path, path)
    np.testing.assert_array_equal(values, HU)
    assert metadata["mode"] == "MONOCHROME1"


def test_bytes_read_like_the_path(tmp_path: Path) -> None:
    path = write_ct_slice(tmp_path / "slice.dcm", HU)
    from_path = read_hounsfield(path, path)
    from_bytes = read_hounsfield(path.read_bytes(), "upload")
    np.testing.assert_array_equal(from_bytes[0], from_path[0])
    assert from_bytes[1] == from_path[1]


def test_preamble_less_dcm_is_read(tmp_path: Path) -> None:
    path = write_ct_slice(tmp_path / "bare.DCM", HU, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    values, _ = read_hounsfield(path, path)
    np.testing.assert_array_equal(values, HU)
    values, _ = read_hounsfield(path.read_bytes(), "bare.dcm")
    np.testing.assert_array_equal(values, HU)


@pytest.mark.parametrize(
    ("hu", "expected"),
    [(0, 0.0), (20, 0.25), (40, 0.5), (80, 1.0), (-1000, 0.0), (1000, 1.0), (-1024, 0.0), (3071, 1.0)],
)
def test_brain_window(hu: float, expected: float) -> None:
    windowed = apply_window(np.array([hu], dtype=np.float32), level=40, width=80)
    assert windowed.dtype == np.float32
    assert windowed[0] == pytest.approx(expected)


@pytest.mark.parametrize("width", [0, -80, float("nan")])
def test_window_width_must_be_positive(width: float) -> None:
    with pytest.raises(ValueError, match="width"):
        apply_window(HU, level=40, width=width)


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_is_dicom(tmp_path: Path) -> None:
    written = write_ct_slice(tmp_path / "slice.dcm", HU)
    assert is_dicom(written)
    assert is_dicom(written.read_bytes())
    renamed = written.rename(tmp_path / "slice.bin")  # the prefix, not the name, makes it DICOM
    assert is_dicom(renamed)
    assert is_dicom(write_ct_slice(tmp_path / "bare.dcm", HU, preamble=False))
    png = tmp_path / "image.png"
    png.write_bytes(png_bytes())
    assert not is_dicom(png)
    assert not is_dicom(png.read_bytes())
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n" * 20)
    assert not is_dicom(text)
    assert not is_dicom(b"")
    assert not is_dicom(tmp_path / "missing.png")


def truncated(tmp_path: Path) -> Path:
    path = write_ct_slice(tmp_path / "truncated.dcm", np.zeros((64, 64), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-1000])
    return path


def header_only(tmp_path: Path) -> Path:
    path = write_ct_slice(tmp_path / "header.dcm", HU)
    path.write_bytes(path.read_bytes()[:150])  # cut inside the File Meta group
    return path


def text_named_dcm(tmp_path: Path) -> Path:
    path = tmp_path / "x.dcm"
    path.write_text("this is a text file, not a DICOM\n" * 10)
    return path


def without_pixel_data(tmp_path: Path) -> Path:
    return edited_dicom(write_ct_slice(tmp_path / "nopixels.dcm", HU), lambda ds: delattr(ds, "PixelData"))


def multi_frame(tmp_path: Path) -> Path:
    def two_frames(dataset: pydicom.Dataset) -> None:
        dataset.NumberOfFrames = 2
        dataset.PixelData = dataset.PixelData * 2

    return edited_dicom(write_ct_slice(tmp_path / "frames.dcm", HU), two_frames)


def colour(tmp_path: Path) -> Path:
    def rgb(dataset: pydicom.Dataset) -> None:
        dataset.SamplesPerPixel = 3
        dataset.PlanarConfiguration = 0
        dataset.PhotometricInterpretation = "RGB"
        dataset.PixelData = dataset.PixelData * 3

    return edited_dicom(write_ct_slice(tmp_path / "colour.dcm", HU), rgb)


def undecodable_compressed(tmp_path: Path) -> Path:
    """JPEG-LS data that no installed plugin can (or, being garbage, could) decode."""
    path = write_ct_slice(tmp_path / "jpegls.dcm", HU)
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = JPEGLSLossless
    dataset.PixelData = encapsulate([b"\xff\xd8 not really JPEG-LS \xff\xd9"])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    return path


def missing(tmp_path: Path) -> Path:
    return tmp_path / "missing.dcm"


def png_named_png(tmp_path: Path) -> Path:
    path = tmp_path / "image.png"
    path.write_bytes(png_bytes())
    return path


BAD_FILES: list[tuple[Callable[[Path], Path], str]] = [
    (truncated, "pixel data holds 7192 bytes where 64x64 pixels of 16 bits need 8192"),
    (header_only, "no DICOM pixel data"),  # pydicom stops quietly at the cut
    (text_named_dcm, "a text file named .dcm"),
    (without_pixel_data, "no DICOM pixel data"),
    (multi_frame, "multi-frame"),
    (colour, "colour"),
    (undecodable_compressed, "its JPEG-LS Lossless Image Compression data has no frame header"),
    (png_named_png, "not a DICOM file"),
    (missing, "cannot read"),
]


@pytest.mark.parametrize(("make", "reason"), BAD_FILES, ids=[make.__name__ for make, _ in BAD_FILES])
def test_bad_files_raise_image_decode_error_naming_the_file(
    tmp_path: Path, make: Callable[[Path], Path], reason: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(ImageDecodeError, match=reason) as caught:
        read_hounsfield(path, path)
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: ")
    if path.exists():
        with pytest.raises(ImageDecodeError, match=reason) as caught:
            read_hounsfield(path.read_bytes(), path.name)
        assert str(caught.value).startswith(f"{path.name}: ")
