"""Hostile input, round two, where it meets predict, the served model and download: one bad file among
good ones costs only its own rows, maps stay apart and say what was not scored, names and cells that
would break a CSV or a spreadsheet are written safely, and a file scores the same alone or in a batch.
The readers' own guards are tested beside them (test_dicom_guards.py, test_volume_guards.py,
test_sources.py)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import tempfile
from pathlib import Path

import highdicom as hd
import keras
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from pipeline.core.config import ArchiveLimits, ScoreConfig
from pipeline.core.io import for_spreadsheets, remove_tree
from pipeline.data.dicom import write_ct_slice
from pipeline.data.images import decode
from pipeline.detection import maps as maps_io
from pipeline.detection.detector import Detector
from pipeline.detection.features import FeatureScore, PatchMemory
from pipeline.detection.normalization import ContentNormalizer
from pipeline.inputs.collect import collect
from pipeline.models import build_model
from pipeline.predict import main, predict
from pipeline.serving.model import ARTIFACT, DetectorModel
from tests.conftest import preprocess_config
from tests.volume_factory import head_volume, write_series, write_volume

SIZE = 32
NO_LIMITS = ArchiveLimits()


@pytest.fixture(scope="module")
def detector(packaged_detector: Path) -> Detector:
    """The tiny test detector with the project's preprocessing (the head found, cropped), scored in the
    head, with a pixel threshold for masks."""
    loaded = Detector.load(packaged_detector / "artifacts" / ARTIFACT)
    return dataclasses.replace(
        loaded,
        preprocess=preprocess_config(SIZE, head=True),
        scoring=ScoreConfig(kind="residual_percentile", region="head", percentile=99, smoothing=1.0),
        pixel_threshold=0.05,
    )


@pytest.fixture(scope="module")
def saved(detector: Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile") / "detector"
    detector.save(folder)
    return folder


def _head_png(path: Path, seed: int = 0) -> Path:
    """An 8-bit slice with a textured head."""
    hu = head_volume(48, 1, seed=seed)[..., 0]
    Image.fromarray(np.clip((hu + 20) * 3, 0, 255).astype(np.uint8)).save(path)
    return path


def _scored(detector: Detector, root: Path, maps: Path | None = None) -> pd.DataFrame:
    """predict over `root`, rows keyed by path (and slice)."""
    return predict(detector, collect(root, root.parent / "unzipped", NO_LIMITS), "test", maps=maps)


def _run(*args: str | Path) -> int:
    return main([str(arg) for arg in args])


# One bad file costs only its own rows (items 7, 8, 11).


def _nifti_bytes(data: np.ndarray, sform: np.ndarray) -> bytes:
    """An uncompressed NIfTI file's bytes with `sform` as written, whatever it is (nibabel's own saving
    would mend a singular one)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header.set_sform(sform, code=1)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4 + np.asfortranarray(data).tobytes(order="F")


def _broken_volume(path: Path, affine: np.ndarray) -> Path:
    """A head volume whose affine (sform) is `affine`: singular, rank-deficient, NaN."""
    path.write_bytes(gzip.compress(_nifti_bytes(head_volume(24, 4).astype(np.int16), affine)))
    return path


@pytest.mark.parametrize(
    "affine",
    [np.zeros((4, 4)), np.diag([1.0, 1.0, 0.0, 1.0]), np.full((4, 4), np.nan)],
    ids=["singular", "rank-deficient", "nan"],
)
def test_a_volume_with_a_broken_affine_is_one_row_and_the_others_are_scored(
    detector: Detector, tmp_path: Path, affine: np.ndarray
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    _head_png(root / "good.png")
    _broken_volume(root / "bad.nii.gz", affine)
    write_volume(root / "fine.nii.gz", head_volume(24, 4))
    rows = _scored(detector, root).set_index("path")
    bad = rows.loc[(root / "bad.nii.gz").as_posix()]
    assert "affine" in bad["error"] and pd.isna(bad["score"])
    assert rows.loc[(root / "good.png").as_posix(), "score"] > 0
    assert rows.loc[[(root / "fine.nii.gz").as_posix()], "score"].notna().sum() >= 2


@pytest.mark.parametrize(
    ("keyword", "value", "reason"),
    [
        ("PixelSpacing", [0.8], "PixelSpacing has 1 value"),
        ("ImageOrientationPatient", [1, 0, 0, 0, 1], "ImageOrientationPatient has 5 values"),
        ("ImagePositionPatient", [0, 0], "ImagePositionPatient has 2 values"),
        ("ImageOrientationPatient", [0, 0, 0, 0, 0, 0], "does not describe a plane"),
    ],
)
def test_a_dicom_with_malformed_geometry_is_one_row_and_its_series_is_still_scored(
    detector: Detector, tmp_path: Path, keyword: str, value: list[float], reason: str
) -> None:
    root = tmp_path / "in"
    files = write_series(root / "ct", np.moveaxis(head_volume(40, 5), 2, 0))
    dataset = pydicom.dcmread(files[2])
    setattr(dataset, keyword, value)
    dataset.save_as(files[2], enforce_file_format=True)
    rows = _scored(detector, root, maps=tmp_path / "maps").set_index("path")
    assert reason in rows.loc[files[2].as_posix(), "error"]
    series = rows.loc[[file.as_posix() for file in files if file != files[2]]]
    assert series["scan"].nunique() == 1 and series["error"].isna().all()


def test_non_finite_voxels_are_errors_and_an_all_nan_volume_with_maps_costs_nothing_else(
    detector: Detector, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    hu = head_volume(40, 6)
    hu[..., 1] = np.nan  # one slice of NaN
    hu[3, 3, 2] = np.inf  # one infinite voxel
    write_volume(root / "holes.nii.gz", hu)
    write_volume(root / "nan.nii.gz", np.full((40, 40, 3), np.nan, np.float32))
    _head_png(root / "good.png")
    maps, heatmaps = tmp_path / "maps", tmp_path / "heatmaps"
    frame = predict(detector, collect(root, tmp_path / "x", NO_LIMITS), "test", heatmaps, maps)
    holes = frame[frame["path"] == (root / "holes.nii.gz").as_posix()].set_index("slice")
    assert holes.loc[1, "error"] == f"non-finite voxel values ({40 * 40} NaN or infinite)"
    assert holes.loc[2, "error"] == "non-finite voxel values (1 NaN or infinite)"
    assert holes["score"].notna().sum() >= 2
    nan = frame[frame["path"] == (root / "nan.nii.gz").as_posix()]
    assert len(nan) == 3 and nan["error"].str.startswith("non-finite voxel values").all()
    assert frame.set_index("path").loc[(root / "good.png").as_posix(), "score"] > 0
    # slices not scored are NaN in the map and NOT_SCORED in the mask, never clean
    anomaly_map = np.asarray(nib.load(maps / "holes.nii.gz.map.nii.gz").dataobj)
    mask = np.asarray(nib.load(maps / "holes.nii.gz.mask.nii.gz").dataobj)
    assert np.isnan(anomaly_map[..., 1]).all() and (mask[..., 1] == maps_io.NOT_SCORED).all()
    scored = holes.index[holes["score"].notna()]
    assert not np.isnan(anomaly_map[..., scored]).any() and (mask[..., scored] <= 1).all()
    assert np.isnan(np.asarray(nib.load(maps / "nan.nii.gz.map.nii.gz").dataobj)).all()


def test_the_unscored_slices_of_a_series_are_not_scored_in_its_seg_and_its_nifti(
    detector: Detector, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    slices = np.moveaxis(head_volume(40, 5), 2, 0)
    slices[0] = -1000  # air: no head, not scored
    files = write_series(root / "ct", slices)
    maps = tmp_path / "maps"
    rows = _scored(detector, root, maps=maps)
    assert rows.loc[rows["slice"] == 0, "error"].str.startswith("no head found").all()
    segmentation = hd.seg.segread(maps / "ct.seg.dcm")
    labels = {item.SegmentNumber: item.SegmentLabel for item in segmentation.SegmentSequence}
    assert labels == {1: "anomaly", 2: "not scored"}
    instances = [str(pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID) for file in files]
    not_scored = segmentation.get_pixels_by_source_instance(instances, segment_numbers=[2])[..., 0]
    assert not_scored[0].all() and not not_scored[1:].any()  # slice 0, all of it; no other
    mask = np.asarray(nib.load(maps / "ct.mask.nii.gz").dataobj)
    assert (mask[..., 0] == maps_io.NOT_SCORED).all() and (mask[..., 1:] < maps_io.NOT_SCORED).all()


# Outputs that cannot collide or be read back as inputs (items 8, 13).


def test_maps_of_a_volume_and_a_series_of_one_name_do_not_collide(detector: Detector, tmp_path: Path) -> None:
    root = tmp_path / "in"
    write_series(root / "ct", np.moveaxis(head_volume(40, 4), 2, 0))
    write_volume(root / "ct.nii.gz", head_volume(40, 4, seed=3))
    maps = tmp_path / "maps"
    _scored(detector, root, maps=maps)
    written = sorted(path.name for path in maps.iterdir())
    assert written == [
        "ct.map.nii.gz",
        "ct.mask.nii.gz",
        "ct.nii.gz.map.nii.gz",
        "ct.nii.gz.mask.nii.gz",
        "ct.seg.dcm",
    ]
    volume_map = np.asarray(nib.load(maps / "ct.nii.gz.map.nii.gz").dataobj)
    series_map = np.asarray(nib.load(maps / "ct.map.nii.gz").dataobj)
    assert volume_map.shape == (40, 40, 4) and series_map.shape == (40, 40, 4)


@pytest.mark.parametrize("option", ["--maps", "--heatmaps"])
def test_an_output_folder_inside_the_input_folder_is_refused_before_scoring(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    _head_png(root / "good.png")
    for folder in (root, root / "maps"):
        assert _run(root, "--model", saved, "--out", tmp_path / "s.csv", option, folder) == 1
        err = capsys.readouterr().err
        assert f"{option} {folder}: inside the input folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.csv").exists() and not (root / "maps").exists()


# Names and cells (items 9, 17, 18).


def test_a_file_name_that_is_not_utf8_and_one_that_is_a_formula_are_written_safely(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    _head_png(Path(os.fsdecode(bytes(root) + b"/caf\xe9.png")))  # Latin-1, not UTF-8
    _head_png(root / '=HYPERLINK("x.example","click").png')
    _head_png(root / "-1.png")
    monkeypatch.chdir(root)  # `predict .`: the paths in the CSV begin with the files' names
    assert _run(".", "--model", saved, "--out", tmp_path / "s.csv", "--maps", tmp_path / "maps") == 0
    text = (tmp_path / "s.csv").read_bytes().decode("utf-8")  # valid UTF-8 throughout
    scores = pd.read_csv(tmp_path / "s.csv")
    assert set(scores["path"]) == {"caf\\xe9.png", "'-1.png", '\'=HYPERLINK("x.example","click").png'}
    assert "\n\"'=HYPERLINK(" in text and "\n=" not in text and '\n"=' not in text  # quoted: commas
    assert scores["score"].notna().all()
    # the same escaping, cell by cell: text that begins like a formula; a number is not
    frame = pd.DataFrame({"path": ['=HYPERLINK("x")', "@SUM(1)", "-1.png", "+1", "ok"], "score": [-1.0] * 5})
    assert for_spreadsheets(frame)["path"].tolist() == [
        '\'=HYPERLINK("x")',
        "'@SUM(1)",
        "'-1.png",
        "'+1",
        "ok",
    ]
    assert for_spreadsheets(frame)["score"].tolist() == [-1.0] * 5
    assert (tmp_path / "maps" / os.fsdecode(b"caf\xe9.png.map.png")).is_file()  # the map keeps the bytes


def test_a_pipe_given_as_path_is_named_as_such(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(tmp_path / "pipe")
    assert _run(tmp_path / "pipe", "--model", saved, "--out", tmp_path / "s.csv") == 1
    assert "pipe: not a file or folder (a pipe, socket or device)" in capsys.readouterr().err


def test_a_folder_nested_deeper_than_the_recursion_limit_is_scored_with_its_maps(
    detector: Detector, tmp_path: Path
) -> None:
    root, maps = tmp_path / "in", tmp_path / "maps"
    deep = root
    try:
        for _ in range(1200):
            deep /= "a"
            deep.mkdir(parents=deep.parent == root)
        _head_png(deep / "deep.png")
        rows = _scored(detector, root, maps=maps)
        assert len(rows) == 1 and rows["score"].notna().all()
        assert (maps / deep.relative_to(root) / "deep.png.map.png").is_file()
    finally:
        remove_tree(root)  # pytest's own clean-up (shutil.rmtree) would recurse
        remove_tree(maps)


# Silent answers (item 12).


def test_a_16_bit_png_black_but_for_one_bright_pixel_has_no_head(tmp_path: Path) -> None:
    values = np.zeros((64, 64), np.uint16)
    values[10, 20] = 60000
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    with pytest.raises(Exception, match="no head found: the largest region .* covers 0 pixels"):
        decode(buffer.getvalue(), preprocess_config(SIZE, head=True), "bright.png")


# The served model (items 5, 16).


def test_the_served_model_names_a_crafted_dicom_row_and_nothing_else_fails(
    detector: Detector, tmp_path: Path
) -> None:
    path = write_ct_slice(tmp_path / "j2k.dcm", np.zeros((16, 16)))
    dataset = pydicom.dcmread(path)
    codestream = io.BytesIO()
    Image.new("L", (600, 500), 0).save(codestream, "JPEG2000", no_jp2=True)
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = encapsulate([codestream.getvalue()])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
    dataset.save_as(path, enforce_file_format=True)
    model = DetectorModel()
    model.detector = detector
    good = _head_png(tmp_path / "good.png").read_bytes()
    with pytest.raises(MlflowException) as raised:
        model.predict(None, pd.DataFrame({"image": [good, path.read_bytes()]}))
    assert raised.value.get_http_status_code() == 400
    assert (
        "row 1:" in raised.value.message
        and "600x500 pixels where its header declares 16x16" in raised.value.message
    )
    assert "row 0" not in raised.value.message


def test_a_slice_scores_the_same_bit_for_bit_alone_and_in_any_batch(detector: Detector) -> None:
    """The U-Net (whose kernels for one image differ from those for several), the feature memory and the
    normaliser each see the same shapes whatever the batch: oneDNN and BLAS pick their kernels by shape."""
    rng = np.random.default_rng(0)
    slices = np.stack([head_volume(40, 1, seed=seed)[..., 0] for seed in range(11)])
    batch = detector.prepare_hounsfield(slices)
    keras.utils.set_random_seed(0)
    unet = build_model("unet", (SIZE, SIZE, 1), {"width": 4, "depth": 3, "batch_norm": False})
    memory = PatchMemory.fit(unet, batch.images, np.ones(batch.images.shape[:3], bool), 0)
    assert memory.usable
    normalizer = ContentNormalizer((0.2, 0.8), (0.01, 0.02), (0.01, 0.01))
    every = {"tta": "flip", "normalize": "content", "features": "always"}
    full = dataclasses.replace(
        detector,
        model=unet,
        scoring=detector.scoring.model_copy(update=every),
        normalizer=normalizer,
        features=FeatureScore(memory, normalizer),
    )
    together = full.score(batch.images)
    for index in (0, 5, 10):
        alone = full.score(batch.images[index : index + 1])
        assert alone[0] == together[index]  # bit for bit
    shuffled = rng.permutation(len(batch.images))
    assert (full.score(batch.images[shuffled]) == together[shuffled]).all()


# One property for all: a broken header among good files costs only its own rows.


def _dicom_bytes(tmp_path: Path) -> bytes:
    return write_ct_slice(tmp_path / "template.dcm", head_volume(32, 1)[..., 0]).read_bytes()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["nifti", "nifti.gz", "dicom"]),
    flips=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 2000)),
)
def test_a_broken_header_among_good_files_costs_only_its_own_rows(
    detector: Detector, tmp_path: Path, kind: str, flips: list[tuple[int, int]], cut: int | None
) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    good = _head_png(root / "good.png")
    volume = head_volume(24, 3).astype(np.int16)
    template = _dicom_bytes(tmp_path) if kind == "dicom" else _nifti_bytes(volume, np.diag([0.9, 0.9, 3, 1]))
    data = bytearray(template)
    for offset, value in flips:
        data[offset % len(data)] = value
    data = data[:cut] if cut is not None else data
    name = {"nifti": "broken.nii", "nifti.gz": "broken.nii.gz", "dicom": "broken.dcm"}[kind]
    (root / name).write_bytes(gzip.compress(bytes(data)) if kind == "nifti.gz" else bytes(data))
    rows = _scored(detector, root)
    assert set(rows["path"]) == {good.as_posix(), (root / name).as_posix()}
    broken = rows[rows["path"] == (root / name).as_posix()]
    assert (broken["score"].notna() | broken["error"].notna()).all()  # a score or a reason, each row
    assert all(len(str(reason)) > 0 for reason in broken["error"].dropna())
    alone = tmp_path / "alone"
    if not alone.exists():
        alone.mkdir()
        _head_png(alone / "good.png")
    expected = _scored(detector, alone)["score"].iloc[0]
    assert rows.set_index("path").loc[good.as_posix(), "score"] == expected
