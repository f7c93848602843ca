"""Maps in the scan's geometry (issue 13): the crop, padding and resizing of `preprocess` inverted, and
`python -m pipeline.predict --maps` writing each input's anomaly map and mask on its own pixel grid (a
PNG's width x height, a NIfTI volume's voxel grid and affine)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.head import bounding_box, head_mask
from pipeline.data.images import decode, preprocess, preprocess_with_geometry, to_slice
from pipeline.data.series import find_series, read_segmentation, write_segmentation
from pipeline.detection.detector import Detector
from pipeline.predict import COLUMNS, main
from pipeline.serving.model import ARTIFACT
from tests.conftest import preprocess_config, score_config, write_scans
from tests.volume_factory import write_series

SIZE = 32


def _head_slice(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A [0, 1] slice with an off-centre elliptical 'head' (textured) on a dark, noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:rows, :cols]
    inside = ((yy - 0.45 * rows) / (0.3 * rows)) ** 2 + ((xx - 0.4 * cols) / (0.28 * cols)) ** 2 < 1
    return np.where(inside, rng.uniform(0.4, 0.9, (rows, cols)), rng.uniform(0, 0.04, (rows, cols))).astype(
        np.float32
    )


@pytest.mark.parametrize("shape", [(50, 70), (70, 50), (33, 91), (64, 64)])
@pytest.mark.parametrize("head", [True, False])
def test_the_model_grid_maps_back_onto_the_slice(shape: tuple[int, int], head: bool) -> None:
    gray = _head_slice(*shape)
    config = preprocess_config(SIZE, head=head)
    mask = head_mask(gray, config.head.threshold)
    image, on_model_grid, geometry = preprocess_with_geometry(gray, config, mask)
    plain = preprocess(gray, config, mask)
    np.testing.assert_array_equal(image, plain[0])  # the geometry changes nothing preprocess gives
    np.testing.assert_array_equal(on_model_grid, plain[1])
    assert geometry.shape == shape
    if head:
        assert geometry.crop == bounding_box(mask, config.head.margin)
    else:
        assert geometry.box == (0, shape[0], 0, shape[1])

    back = to_slice(on_model_grid > 0.5, geometry)
    assert back.shape == shape and back.dtype == np.float32
    recovered = back > 0.5
    overlap = (recovered & mask).sum() / (recovered | mask).sum()
    assert overlap > 0.9, overlap  # a 32-pixel grid and back: only the outline's pixels may differ
    ones = to_slice(np.ones((SIZE, SIZE), np.float32), geometry)
    expected = np.zeros(shape, np.float32)
    expected[geometry.crop] = 1.0
    np.testing.assert_allclose(ones, expected, atol=1e-6)  # exactly the crop box, nothing outside it


def test_an_empty_slice_maps_back_to_its_whole_grid() -> None:
    config = preprocess_config(SIZE, head=True)
    _, _, geometry = preprocess_with_geometry(np.zeros((21, 40), np.float32), config)
    assert geometry.box == (0, 21, 0, 40)
    assert to_slice(np.full((SIZE, SIZE), 0.25, np.float32), geometry).shape == (21, 40)


@pytest.fixture(scope="module")
def mapping_detector(packaged_detector: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The tiny test detector with the project's preprocessing (head found, cropped), scored in the
    head, and a pixel threshold that splits its residuals: (its folder, the pixel threshold)."""
    loaded = Detector.load(packaged_detector / "artifacts" / ARTIFACT)
    detector = dataclasses.replace(
        loaded, preprocess=preprocess_config(SIZE, head=True), scoring=score_config(region="head")
    )
    batch = detector.prepare_hounsfield(np.stack([_head_slice(50, 70, seed) * 80 for seed in range(4)]))
    maps = detector.residual_maps(batch.images, detector.reconstruct(batch.images))
    detector.pixel_threshold = float(np.median(maps[maps > 0]))
    folder = tmp_path_factory.mktemp("mapping") / "detector"
    detector.save(folder)
    return folder, detector.pixel_threshold


def _run(*args: str | Path) -> int:
    return main([str(arg) for arg in args])


def test_image_maps_have_the_inputs_size_and_the_mask_is_the_map_over_the_threshold(
    mapping_detector: tuple[Path, float], tmp_path: Path
) -> None:
    folder, pixel_threshold = mapping_detector
    scans = tmp_path / "scans"
    files = write_scans(scans)
    odd = scans / "a" / "odd.png"
    Image.fromarray(np.round(_head_slice(50, 70) * 255).astype(np.uint8)).save(odd)  # 70 wide, 50 high
    maps = tmp_path / "maps"
    assert _run(scans, "--model", folder, "--out", tmp_path / "s.csv", "--maps", maps) == 0
    scores = pd.read_csv(tmp_path / "s.csv")
    assert list(scores.columns) == COLUMNS and scores["slice"].isna().all()

    for file in (odd, files["png"], files["jpeg"], files["dicom"]):
        relative = file.relative_to(scans)
        map_file = maps / relative.parent / f"{file.name}.map.png"
        mask_file = maps / relative.parent / f"{file.name}.mask.png"
        with Image.open(map_file) as map_image, Image.open(mask_file) as mask_image:
            width, height = decode(file, preprocess_config(SIZE)).pixels.shape[::-1]
            assert map_image.size == mask_image.size == (width, height)
            assert map_image.mode == "I;16" and mask_image.mode == "L"
            residual = np.asarray(map_image).astype(np.float64) / 65535
            mask = np.asarray(mask_image)
        assert set(np.unique(mask)) <= {0, 255}
        clear = np.abs(residual - pixel_threshold) > 1 / 65535  # away from the 16-bit rounding
        np.testing.assert_array_equal((mask == 255)[clear], (residual > pixel_threshold)[clear])
    residual = np.asarray(Image.open(maps / "a" / "odd.png.map.png")).astype(np.float64) / 65535
    mask = np.asarray(Image.open(maps / "a" / "odd.png.mask.png")) == 255
    assert residual.max() > 0 and 0 < mask.sum() < mask.size  # a real map, a real split
    head = head_mask(_head_slice(50, 70), 0.1)
    assert not residual[~bounding_box_mask(head, 0.02)].any()  # nothing outside the head's crop box

    for bad in ("text", "truncated"):  # unreadable files: an error row, no maps
        name = files[bad].name
        assert not list(maps.rglob(f"{name}.*"))
        assert scores.set_index("path").loc[files[bad].as_posix(), "error"]


def bounding_box_mask(mask: np.ndarray, margin: float) -> np.ndarray:
    box = np.zeros_like(mask)
    box[bounding_box(mask, margin)] = True
    return box


# The file's own axes, none of them RAS: i runs from the top of the head down, j from the patient's right
# to their left, k from anterior to posterior; anisotropic spacing and an offset, as a real file may have.
AFFINE = np.array(
    [
        [0.0, -0.9, 0.0, 40.0],
        [0.0, 0.0, -0.8, 30.0],
        [-2.5, 0.0, 0.0, 20.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A (7, 46, 38) CT volume in HU on AFFINE's axes: an off-centre head (30-50 HU, growing towards
    the top) in air; and its head mask on the same grid."""
    rng = np.random.default_rng(3)
    n_axial, n_lr, n_ap = 7, 46, 38
    i, j, k = np.mgrid[:n_axial, :n_lr, :n_ap]
    superior = (n_axial - 1 - i) / (n_axial - 1)  # i runs downwards
    radius = 0.6 + 0.4 * superior
    head = ((j - 0.35 * n_lr) / (0.25 * n_lr * radius)) ** 2 + (
        (k - 0.55 * n_ap) / (0.3 * n_ap * radius)
    ) ** 2 < 1
    hu = np.where(head, rng.integers(30, 50, head.shape), -1000).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, AFFINE), path)
    return hu, head


def test_volume_maps_keep_the_files_grid_and_affine(
    mapping_detector: tuple[Path, float], tmp_path: Path
) -> None:
    folder, pixel_threshold = mapping_detector
    scans = tmp_path / "scans"
    (scans / "ct").mkdir(parents=True)
    hu, head = _volume(scans / "ct" / "brain_01.nii.gz")
    Image.fromarray(np.round(_head_slice(50, 70) * 255).astype(np.uint8)).save(scans / "slice.png")
    (scans / "ct" / "cut.nii.gz").write_bytes((scans / "ct" / "brain_01.nii.gz").read_bytes()[:300])
    maps = tmp_path / "maps"
    heatmaps = tmp_path / "heatmaps"
    args = ("--out", tmp_path / "s.csv", "--maps", maps, "--heatmaps", heatmaps)
    assert _run(scans, "--model", folder, *args) == 0
    assert (heatmaps / "ct" / "brain_01.nii.gz.png").is_file()  # a volume's figure: its top slice

    scores = pd.read_csv(tmp_path / "s.csv")
    volume_rows = scores[scores["path"] == (scans / "ct" / "brain_01.nii.gz").as_posix()]
    assert volume_rows["slice"].tolist() == list(range(7)) and volume_rows["score"].notna().all()
    cut = scores[scores["path"] == (scans / "ct" / "cut.nii.gz").as_posix()]
    assert cut["error"].str.startswith("cannot read NIfTI").all() and cut["score"].isna().all()
    assert scores.set_index("path").loc[(scans / "slice.png").as_posix(), "score"] > 0
    assert (maps / "slice.png.map.png").is_file()
    assert (maps / "ct" / "cut.nii.gz.map.nii.gz").is_file()  # every slice not scored: NaN throughout
    assert np.isnan(np.asarray(nib.load(maps / "ct" / "cut.nii.gz.map.nii.gz").dataobj)).all()

    map_image = nib.load(maps / "ct" / "brain_01.nii.gz.map.nii.gz")
    mask_image = nib.load(maps / "ct" / "brain_01.nii.gz.mask.nii.gz")
    for image in (map_image, mask_image):
        assert image.shape == hu.shape
        np.testing.assert_allclose(image.affine, AFFINE, atol=1e-5)
    assert map_image.get_data_dtype() == np.float32 and mask_image.get_data_dtype() == np.uint8
    anomaly_map, mask = np.asarray(map_image.dataobj), np.asarray(mask_image.dataobj)
    np.testing.assert_array_equal(mask, (anomaly_map > pixel_threshold).astype(np.uint8))
    assert 0 < mask.sum() < mask.size
    # Scored in the head: the map lies on the head, as the file's own axes place it (a permuted or
    # flipped map would spill into the air, as the head is off-centre and grows towards the top).
    near_head = np.stack([_dilate(plane, 2) for plane in head])
    assert not anomaly_map[~near_head].any()
    assert (anomaly_map[head] > 0).mean() > 0.9


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=iterations)


def test_a_dicom_series_gets_nifti_maps_with_its_geometry_and_a_dicom_seg(
    mapping_detector: tuple[Path, float], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, pixel_threshold = mapping_detector
    scans = tmp_path / "scans"
    slices = np.stack([_head_slice(50, 70, seed) * 80 for seed in range(5)])  # rows 50, columns 70
    tilted = (1, 0, 0, 0, float(np.cos(0.2)), float(np.sin(0.2)))  # a tilted gantry: still axial
    names = ["c.dcm", "a.dcm", "e.dcm", "b.dcm", "d.dcm"]  # not in position order
    files = write_series(scans / "p01" / "ct", slices, orientation=tilted, names=names)
    write_series(scans / "p02" / "sag", slices[:3], orientation=(0, 1, 0, 0, 0, -1), patient="p2")
    write_series(scans / "p03" / "gap", slices, patient="p3")[2].unlink()
    (found,), _, _ = find_series(files)
    write_segmentation(found, np.zeros((5, 50, 70), dtype=bool), scans / "p01" / "lesion.seg.dcm", "test")
    maps = tmp_path / "maps"
    assert _run(scans, "--model", folder, "--out", tmp_path / "s.csv", "--maps", maps) == 0

    scores = pd.read_csv(tmp_path / "s.csv")
    series = scores[scores["scan"] == (scans / "p01" / "ct").as_posix()].set_index("path")
    assert [series.at[file.as_posix(), "slice"] for file in files] == list(range(5))
    sagittal = scores[scores["scan"] == (scans / "p02" / "sag").as_posix()]
    assert len(sagittal) == 3 and sagittal["error"].str.contains("a sagittal slice").all()

    assert not scores["path"].str.endswith("lesion.seg.dcm").any()  # a mask, not an input
    map_image = nib.load(maps / "p01" / "ct.map.nii.gz")
    mask_image = nib.load(maps / "p01" / "ct.mask.nii.gz")
    for image in (map_image, mask_image):
        assert image.shape == (70, 50, 5)
        np.testing.assert_allclose(image.affine, found.affine, atol=1e-5)
    anomaly_map, mask = np.asarray(map_image.dataobj), np.asarray(mask_image.dataobj)
    np.testing.assert_array_equal(mask, (anomaly_map > pixel_threshold).astype(np.uint8))
    assert 0 < mask.sum() < mask.size
    # each slice of the stack is the map that slice gets when scored on its own, transposed to (i, j)
    single = tmp_path / "single"
    assert _run(files[3], "--model", folder, "--out", tmp_path / "one.csv", "--maps", single) == 0
    alone = np.asarray(Image.open(single / "b.dcm.map.png")).astype(np.float64) / 65535
    np.testing.assert_allclose(anomaly_map[:, :, 3].T, alone, atol=1 / 65535)

    segmentation = read_segmentation(maps / "p01" / "ct.seg.dcm", found)
    np.testing.assert_array_equal(segmentation, np.transpose(mask, (2, 1, 0)).astype(bool))
    assert (maps / "p03" / "gap.seg.dcm").is_file() and not (maps / "p03" / "gap.map.nii.gz").exists()
    assert "p03/gap: its slices are unevenly spaced" in caplog.text
    assert not list(maps.rglob("*.png"))  # series slices get no per-file PNGs


def test_maps_that_is_a_file_is_one_error_before_scoring(
    mapping_detector: tuple[Path, float], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = write_scans(tmp_path / "scans")
    (tmp_path / "maps").write_text("a file")
    code = _run(
        files["png"], "--model", mapping_detector[0], "--out", tmp_path / "s.csv", "--maps", tmp_path / "maps"
    )
    err = capsys.readouterr().err
    assert code == 1 and "--maps" in err and "not a folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.csv").exists()


def test_maps_from_a_detector_without_a_pixel_threshold_is_one_error(
    packaged_detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = write_scans(tmp_path / "scans")
    code = _run(
        files["png"], "--model", packaged_detector, "--out", tmp_path / "s.csv", "--maps", tmp_path / "m"
    )
    err = capsys.readouterr().err
    assert code == 1 and "pixel threshold" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "m").exists()
