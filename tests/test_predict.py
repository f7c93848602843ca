"""`python -m pipeline.predict`: files, folders and zips scored like the pipeline scores them; bad
files reported with the reason; a missing or thresholdless model is one clear message."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import keras
import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import PipelineError
from pipeline.data.dicom import write_ct_slice
from pipeline.data.images import load_image
from pipeline.data.volumes import open_volume
from pipeline.detection.normalization import ReferenceNormalizer, SliceFacts
from pipeline.predict import COLUMNS, main
from pipeline.serving.model import ARTIFACT
from pipeline.stages import packaging
from pipeline.stages.packaging import load_detector
from tests.conftest import write_scans
from tests.volume_factory import head_volume


def _predict(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, pd.DataFrame | None, str]:
    code = main([str(arg) for arg in args])
    out = next((Path(args[i + 1]) for i, arg in enumerate(args) if arg == "--out"), None)
    return code, pd.read_csv(out) if out and out.exists() else None, capsys.readouterr().err


def test_a_folder_is_scored_recursively_with_bad_files_reported(
    packaged_detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = write_scans(tmp_path / "scans")
    code, scores, err = _predict(
        capsys, tmp_path / "scans", "--model", packaged_detector, "--out", tmp_path / "scores.csv"
    )
    assert code == 0 and list(scores.columns) == COLUMNS
    assert sorted(scores["path"]) == sorted(p.as_posix() for p in files.values())
    by_path = scores.set_index("path")
    detector = load_detector(str(packaged_detector))
    for kind in ("png", "jpeg", "dicom"):
        row = by_path.loc[files[kind].as_posix()]
        direct = detector.score(load_image(files[kind], detector.preprocess)[None, ..., None])[0]
        assert row["score"] == pytest.approx(direct, rel=1e-5)
        assert row["is_anomaly"] == (row["score"] > 0.05) and pd.isna(row["error"])
    assert (scores["threshold"] == 0.05).all() and (scores["run_id"] == "test-run").all()
    assert "not an image" in by_path.loc[files["text"].as_posix(), "error"]
    assert "cannot decode" in by_path.loc[files["truncated"].as_posix(), "error"]
    assert by_path.loc[files["truncated"].as_posix(), ["score", "is_anomaly"]].isna().all()
    assert f"warning: {files['text'].as_posix()}" in err


def test_a_zip_scores_like_the_folder_it_holds(
    packaged_detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = write_scans(tmp_path / "scans")
    archive = tmp_path / "scans.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in files.values():
            zipped.write(file, file.relative_to(tmp_path / "scans").as_posix())
    _, folder, _ = _predict(
        capsys, tmp_path / "scans", "--model", packaged_detector, "--out", tmp_path / "f.csv"
    )
    code, zipped_scores, _ = _predict(
        capsys, archive, "--model", packaged_detector, "--out", tmp_path / "z.csv"
    )
    assert code == 0
    assert zipped_scores["path"].tolist() == [
        p.replace(str(tmp_path / "scans"), str(archive)) for p in folder["path"]
    ]
    np.testing.assert_allclose(zipped_scores["score"], folder["score"])


def test_one_file_with_heat_maps(
    packaged_detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dicom = write_scans(tmp_path / "scans")["dicom"]
    code, scores, _ = _predict(
        capsys,
        dicom,
        "--model",
        packaged_detector,
        "--out",
        tmp_path / "s.csv",
        "--heatmaps",
        tmp_path / "maps",
    )
    assert code == 0 and scores["path"].tolist() == [dicom.as_posix()] and scores["score"].notna().all()
    assert (tmp_path / "maps" / "ct.dcm.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "nowhere", "no such file or folder"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no files to score"),
    ],
)
def test_nothing_to_score_is_one_message(
    make, message: str, packaged_detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _predict(capsys, make(tmp_path), "--model", packaged_detector, "--out", tmp_path / "s.csv")
    assert code == 1 and message in err and not (tmp_path / "s.csv").exists()


def test_only_unreadable_files_is_an_error_with_the_reasons_kept(
    packaged_detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"")
    code, scores, err = _predict(
        capsys, tmp_path / "bad", "--model", packaged_detector, "--out", tmp_path / "s.csv"
    )
    assert code == 1 and "none of the 1 files" in err and scores["error"].tolist() == ["empty file (0 bytes)"]


def test_models_that_cannot_score_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scans = write_scans(tmp_path / "scans")["png"]
    code, _, err = _predict(capsys, scans, "--model", tmp_path / "missing", "--out", tmp_path / "s.csv")
    assert code == 1 and "does not exist" in err
    bare = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Identity()])
    mlflow.keras.save_model(bare, str(tmp_path / "autoencoder"))
    code, _, err = _predict(capsys, scans, "--model", tmp_path / "autoencoder", "--out", tmp_path / "s.csv")
    assert code == 1 and "not a detector" in err and "no threshold" in err
    (tmp_path / "folder").mkdir()
    code, _, err = _predict(capsys, scans, "--model", tmp_path / "folder", "--out", tmp_path / "s.csv")
    assert code == 1 and "not a detector" in err


def test_a_detector_folder_without_a_threshold_is_refused(packaged_detector: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(packaged_detector / "artifacts" / ARTIFACT, tmp_path / "d")
    settings = json.loads((folder / "detector.json").read_text())
    del settings["threshold"]
    (folder / "detector.json").write_text(json.dumps(settings))
    with pytest.raises(PipelineError, match="no numeric 'threshold'"):
        load_detector(str(folder))


@pytest.fixture
def no_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    """A defect found at the start must stop predict before any file is scored."""
    monkeypatch.setattr(
        "pipeline.predict.predict", lambda *args, **kwargs: pytest.fail("files scored before the check")
    )


def _refused(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    """What predict says when it must refuse `args`: exit status 1 and one line."""
    code = main([str(arg) for arg in args])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("packaged", [True, False], ids=["mlflow-folder", "detector-folder"])
@pytest.mark.parametrize(
    ("defect", "message"),
    [
        (
            lambda d: (d / "detector.json").write_text('{"threshold": 0.0'),
            "detector.json: cannot be read as JSON",
        ),
        (
            lambda d: (d / "model.keras").write_bytes((d / "model.keras").read_bytes()[:500]),
            "model.keras: cannot load",
        ),
        (lambda d: (d / "model.keras").unlink(), "not a detector (no model.keras)"),
    ],
    ids=["corrupt-json", "truncated-model", "no-model"],
)
@pytest.mark.usefixtures("no_scoring")
def test_a_defective_detector_folder_is_one_line(
    defect,
    message: str,
    packaged: bool,
    packaged_detector: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = shutil.copytree(packaged_detector, tmp_path / "model")
    defect(model / "artifacts" / ARTIFACT)
    if not packaged:
        model = model / "artifacts" / ARTIFACT
    image = write_scans(tmp_path / "scans")["png"]
    assert message in _refused(capsys, image, "--model", model, "--out", tmp_path / "s.csv")


@pytest.mark.usefixtures("no_scoring")
def test_a_corrupt_mlmodel_file_is_one_line(
    packaged_detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = shutil.copytree(packaged_detector, tmp_path / "model")
    (model / "MLmodel").write_text("flavors: [unclosed\n")
    image = write_scans(tmp_path / "scans")["png"]
    assert "cannot load model" in _refused(capsys, image, "--model", model, "--out", tmp_path / "s.csv")


@pytest.mark.parametrize(
    ("option", "make", "message"),
    [
        ("--out", lambda tmp: (tmp / "dir").mkdir() or tmp / "dir", "is a folder, not a file"),
        ("--out", lambda tmp: (tmp / "f").write_text("") or tmp / "f" / "s.csv", "is not a folder"),
        ("--heatmaps", lambda tmp: (tmp / "f").write_text("") or tmp / "f", "exists and is not a folder"),
        ("--maps", lambda tmp: (tmp / "f").write_text("") or tmp / "f", "exists and is not a folder"),
    ],
)
@pytest.mark.usefixtures("no_scoring")
def test_an_output_that_cannot_be_written_is_refused_before_scoring(
    option: str,
    make,
    message: str,
    packaged_detector: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = write_scans(tmp_path / "scans")["png"]
    args = {"--out": tmp_path / "s.csv", option: make(tmp_path)}
    err = _refused(capsys, image, "--model", packaged_detector, *(a for item in args.items() for a in item))
    assert err.startswith(f"error: {option} {args[option]}: ") and message in err


def test_a_volume_is_scored_slice_by_slice_as_its_slices_would_be(
    packaged_detector: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A NIfTI volume in a folder of images: one row per axial slice (inferior to superior), each scored
    as the same slice in HU saved as DICOM; a truncated volume gets error rows; the log has the
    volume's score (its highest slice's)."""
    caplog.set_level(logging.INFO)
    files = write_scans(tmp_path / "scans")
    hu = head_volume(24, 7)[:, 2:22, 1:6].astype(np.int16)  # x 24, y 20: an off-square grid, 5 slices
    (tmp_path / "scans" / "ct").mkdir()
    volume_file = tmp_path / "scans" / "ct" / "head.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([-0.8, 0.8, -3.0, 1.0])), volume_file)  # x and z flipped
    cut = tmp_path / "scans" / "ct" / "cut.nii.gz"
    cut.write_bytes(volume_file.read_bytes()[:200])
    code, scores, err = _predict(
        capsys, tmp_path / "scans", "--model", packaged_detector, "--out", tmp_path / "s.csv"
    )
    assert code == 0 and list(scores.columns) == COLUMNS
    rows = scores[scores["path"] == volume_file.as_posix()]
    assert rows["slice"].tolist() == [0, 1, 2, 3, 4] and rows["error"].isna().all()
    others = scores[~scores["path"].isin([volume_file.as_posix(), cut.as_posix()])]
    assert others["slice"].isna().all() and len(others) == len(files)
    # its header reads, its voxels end early: each slice an error row naming the file's fault
    broken = scores[scores["path"] == cut.as_posix()]
    assert broken["slice"].tolist() == [0, 1, 2, 3, 4] and broken["score"].isna().all()
    assert broken["error"].str.startswith("cannot read NIfTI (slices 0..4)").all()
    assert f"warning: {cut.as_posix()} slice 0: cannot read NIfTI" in err

    detector = load_detector(str(packaged_detector))
    with open_volume(volume_file) as volume:
        slices = volume.read(0, volume.count)
    assert slices.shape == (5, 20, 24)
    np.testing.assert_array_equal(slices[0], hu[::-1, :, 4].T[::-1, ::-1])  # the inferior slice, displayed
    (tmp_path / "dicom").mkdir()
    for k in range(5):
        dicom = write_ct_slice(tmp_path / "dicom" / f"{k}.dcm", slices[k])
        direct = detector.score(load_image(dicom, detector.preprocess)[None, ..., None])[0]
        assert rows["score"].iloc[k] == pytest.approx(direct, rel=1e-5)
    top = rows["score"].max()
    assert f"{volume_file.as_posix()}: scan score {top:.6g}" in caplog.text


def test_a_volumes_slices_are_judged_against_healthy_slices_of_their_level(
    packaged_detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a reference normaliser, slice k of n is scored at level k / (n - 1), from the feet up."""
    detector = load_detector(str(packaged_detector))
    levels = np.linspace(0, 1, 40)
    reference = SliceFacts(np.full(40, 0.5), np.full((40, 4), 0.5), levels)
    detector.normalizer = ReferenceNormalizer.fit(reference, 3.0 - 2.0 * levels)
    packaging.save(detector, tmp_path / "detector")
    hu = head_volume(24, 7)[:, :, 1:6].astype(np.int16)
    (tmp_path / "scans").mkdir()
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 3.0, 1.0])), tmp_path / "scans" / "head.nii.gz")
    code, scores, _ = _predict(
        capsys, tmp_path / "scans", "--model", tmp_path / "detector", "--out", tmp_path / "s.csv"
    )
    assert code == 0 and scores["slice"].tolist() == [0, 1, 2, 3, 4]
    with open_volume(tmp_path / "scans" / "head.nii.gz") as volume:
        batch = detector.prepare_hounsfield(volume.read(0, volume.count))
    expected = detector.score(batch.images, np.arange(5) / 4)
    np.testing.assert_allclose(scores["score"], expected, rtol=1e-5)
    assert not np.allclose(expected, detector.score(batch.images))  # the levels made a difference
