"""DICOM series: grouped and ordered by position, their affine places every pixel where its own header
does, masks round-trip through DICOM-SEG, and slices that are not axial are refused."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from pipeline.core.errors import ImageDecodeError
from pipeline.data.dicom import read_hounsfield
from pipeline.data.series import find_series, read_segmentation, write_segmentation
from tests.volume_factory import head_volume, write_series

# A gantry tilted by 15 degrees about the patient's left-right axis: still axial slices, but oblique.
TILT = np.deg2rad(15)
TILTED = (1, 0, 0, 0, float(np.cos(TILT)), float(np.sin(TILT)))


def _slices(count: int = 5, rows: int = 24, columns: int = 32) -> np.ndarray:
    return np.transpose(head_volume(32, count), (2, 0, 1))[:, :rows, :columns]


def _world_ras(header: pydicom.Dataset, row: int, column: int) -> np.ndarray:
    """Where a pixel lies, from its own header alone (DICOM's LPS, turned to RAS)."""
    row_cosine, column_cosine = np.asarray(header.ImageOrientationPatient, dtype=float).reshape(2, 3)
    spacing_rows, spacing_columns = (float(v) for v in header.PixelSpacing)
    lps = (
        np.asarray(header.ImagePositionPatient, dtype=float)
        + row_cosine * spacing_columns * column
        + column_cosine * spacing_rows * row
    )
    return lps * np.array([-1.0, -1.0, 1.0])


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), TILTED, (-1, 0, 0, 0, -1, 0)])
def test_a_series_is_ordered_by_position_and_its_affine_places_each_pixel(
    orientation: tuple[float, ...], tmp_path: Path
) -> None:
    names = ["c.dcm", "a.dcm", "e.dcm", "b.dcm", "d.dcm"]  # slice order is not name order
    files = write_series(tmp_path / "ct", _slices(), orientation=orientation, names=names)
    other = write_series(tmp_path / "ct", _slices(3), series="other")  # a second series in the folder
    (tmp_path / "ct" / "notes.txt").write_text("not DICOM")
    found, rest, refused = find_series(sorted((tmp_path / "ct").iterdir()))
    assert rest == [tmp_path / "ct" / "notes.txt"] and refused == {}
    assert sorted(len(series.files) for series in found) == [3, 5]
    series = next(s for s in found if len(s.files) == 5)
    assert list(series.files) == files and series.regular and series.shape == (32, 24, 5)
    assert set(next(s for s in found if len(s.files) == 3).files) == set(other)
    for index, file in enumerate(series.files):
        header = pydicom.dcmread(file)
        for row, column in ((0, 0), (7, 3), (23, 31)):
            np.testing.assert_allclose(
                series.affine @ [column, row, index, 1], [*_world_ras(header, row, column), 1]
            )


def test_a_missing_slice_leaves_an_irregular_series_and_lone_slices_stay_alone(tmp_path: Path) -> None:
    files = write_series(tmp_path / "ct", _slices(6))
    files[2].unlink()
    write_series(tmp_path / "single", _slices(1))
    (series,), rest, _ = find_series(sorted(tmp_path.rglob("*.dcm")))
    assert len(series.files) == 5 and not series.regular
    assert rest == [tmp_path / "single" / "IM0000.dcm"]


def test_a_mask_round_trips_through_dicom_seg_onto_the_series_own_instances(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", _slices(), names=["c.dcm", "a.dcm", "e.dcm", "b.dcm", "d.dcm"])
    (series,), _, _ = find_series(sorted((tmp_path / "ct").iterdir()))
    mask = np.zeros((5, 24, 32), dtype=bool)
    mask[2, 5:9, 10:20] = mask[3, 6:8, 12:14] = True
    write_segmentation(series, mask, tmp_path / "seg.dcm", "test")
    segmentation = hd.seg.segread(tmp_path / "seg.dcm")
    assert segmentation.Modality == "SEG" and segmentation.PatientID == "p1"
    uids = [str(header.SOPInstanceUID) for header in series.headers]
    frames = segmentation.get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(frames != 0, mask)
    np.testing.assert_array_equal(read_segmentation(tmp_path / "seg.dcm", series), mask)

    write_series(tmp_path / "elsewhere", _slices(), patient="p2")
    (stranger,), _, _ = find_series(sorted((tmp_path / "elsewhere").iterdir()))
    with pytest.raises(ImageDecodeError, match="seg.dcm: references none of the slices"):
        read_segmentation(tmp_path / "seg.dcm", stranger)


@pytest.mark.parametrize(
    ("orientation", "plane"), [((0, 1, 0, 0, 0, -1), "sagittal"), ((1, 0, 0, 0, 0, -1), "coronal")]
)
def test_slices_that_are_not_axial_are_refused_by_name(
    orientation: tuple[float, ...], plane: str, tmp_path: Path
) -> None:
    (file, *_) = write_series(tmp_path / "ct", _slices(2), orientation=orientation)
    with pytest.raises(ImageDecodeError, match=f"IM0000.dcm: a {plane} slice: the detector reads axial"):
        read_hounsfield(file, file)
    tilted = write_series(tmp_path / "tilted", _slices(1), orientation=TILTED)[0]
    assert read_hounsfield(tilted, tilted)[0].shape == (24, 32)


def test_slices_that_were_not_scored_get_a_not_scored_segment_never_an_empty_frame(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", _slices())
    (series,), _, _ = find_series(sorted((tmp_path / "ct").iterdir()))
    mask = np.zeros((5, 24, 32), dtype=bool)
    mask[1, 5:9, 10:20] = mask[3, 6:8, 12:14] = True
    scored = np.array([True, True, False, False, True])
    write_segmentation(series, mask, tmp_path / "seg.dcm", "test", scored)
    segmentation = hd.seg.segread(tmp_path / "seg.dcm")
    labels = {
        n: segmentation.get_segment_description(n).segment_label for n in segmentation.get_segment_numbers()
    }
    assert labels == {1: "anomaly", 2: "not scored"}
    uids = [str(header.SOPInstanceUID) for header in series.headers]

    def segment(number: int) -> np.ndarray:
        return (
            segmentation.get_pixels_by_source_instance(uids, segment_numbers=[number], combine_segments=True)
            != 0
        )

    np.testing.assert_array_equal(segment(2), np.broadcast_to(~scored[:, None, None], mask.shape))
    found = mask & scored[:, None, None]  # an unscored slice has no finding, whatever its map held
    np.testing.assert_array_equal(segment(1), found)
    np.testing.assert_array_equal(read_segmentation(tmp_path / "seg.dcm", series), found)
