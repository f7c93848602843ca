"""Bad input gets one clear reason and no score: images too large to decode (refused from the header),
zip bombs (refused before extraction), slices with nothing to score, and files that cannot be read at
all, wherever they enter: training data, predict and the served model."""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode
from PIL import Image, ImageFile

from pipeline.core.config import ArchiveLimits
from pipeline.core.errors import DataError, ImageDecodeError
from pipeline.data import synthetic
from pipeline.data.dicom import write_ct_slice
from pipeline.data.guards import MIN_SIDE, file_type, list_files
from pipeline.data.images import DECODE_WORKERS, decode
from pipeline.data.manifest import build_manifest
from pipeline.data.sources import LocalData, SyntheticData, fetch, safe_extract
from pipeline.detection import detector as detector_module
from pipeline.detection.detector import Detector
from pipeline.predict import main
from tests.conftest import preprocess_config, score_config

CONFIG = preprocess_config(32)
EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _png(size: tuple[int, int], value: int = 0, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def _head(size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """A bright disc on black: a slice with a head."""
    rows, cols = np.mgrid[: size[1], : size[0]]
    disc = (rows - size[1] / 2) ** 2 + (cols - size[0] / 2) ** 2 < (min(size) / 3) ** 2
    return np.where(disc, 180, 0).astype(np.uint8)


def _tiff(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.float32), mode="F").save(buffer, format="TIFF")
    return buffer.getvalue()


def _reason(source: bytes | Path, name: str = "x.png", config=CONFIG) -> str:
    with pytest.raises(ImageDecodeError) as raised:
        decode(source, config, name)
    return raised.value.reason


def _predict(
    capsys: pytest.CaptureFixture[str], path: Path, model: Path, out: Path
) -> tuple[int, pd.DataFrame | None, str]:
    code = main([str(path), "--model", str(model), "--out", str(out)])
    return code, pd.read_csv(out) if out.exists() else None, capsys.readouterr().err


# 1. Pixels are counted from the header, before anything is decoded.


def test_too_many_pixels_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were decoded"))
    reason = _reason(_png((5000, 4000)))
    assert reason == "5000x4000 pixels is above preprocess.max_pixels (16777216)"


def test_a_dicom_with_too_many_pixels_is_refused_before_its_pixel_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_ct_slice(tmp_path / "big.dcm", np.zeros((64, 80)))
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(lambda self: pytest.fail("decoded")))
    small = CONFIG.model_copy(update={"max_pixels": 64 * 80 - 1})
    assert _reason(path, config=small) == "80x64 pixels is above preprocess.max_pixels (5119)"


@EXAMPLES
@given(width=st.integers(MIN_SIDE, 120), height=st.integers(MIN_SIDE, 120), limit=st.integers(256, 12000))
def test_the_limit_is_exactly_the_pixel_count(width: int, height: int, limit: int) -> None:
    png = io.BytesIO()
    Image.fromarray(_head((width, height))).save(png, format="PNG")
    config = CONFIG.model_copy(update={"max_pixels": limit})
    if width * height > limit:
        assert _reason(png.getvalue(), config=config).startswith(f"{width}x{height} pixels is above")
    else:
        assert decode(png.getvalue(), config, "x.png").pixels.shape == (height, width)


def test_no_more_files_are_decoded_at_once_than_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays bounded whatever a folder holds: a handful of slices in flight, not one per core."""
    running, most = 0, 0
    lock = threading.Lock()

    def counting(source, config, name):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return decode(source, config, name)

    monkeypatch.setattr(detector_module, "decode", counting)
    png = io.BytesIO()
    Image.fromarray(_head()).save(png, format="PNG")
    detector = Detector(None, 0.5, CONFIG, score_config())
    batch = detector.decode([png.getvalue()] * 40, [f"row {i}" for i in range(40)])
    assert len(batch.decoded) == 40 and 1 <= most <= DECODE_WORKERS <= 4


# 2. Zip archives: what they declare is checked before anything is written.


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in entries.items():
            zipped.writestr(name, data)
    return path


def test_a_zip_bomb_is_refused_naming_the_entry(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", {"ok.txt": b"fine", "inner/zeros.bin": bytes(20_000_000)})
    with pytest.raises(DataError, match=r"entry 'inner/zeros.bin' expands .* archive.max_ratio"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits())
    assert not (tmp_path / "out").exists()


def test_a_zip_above_the_total_size_is_refused_naming_the_entry(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    archive = _zip(tmp_path / "big.zip", {name: rng.bytes(600) for name in ("a", "b", "c")})
    with pytest.raises(DataError, match=r"entries up to 'b' hold 1200 bytes .* archive.max_size \(1000\)"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_size=1000))


@EXAMPLES
@given(
    entries=st.lists(
        st.tuples(st.integers(0, 5000), st.booleans()), min_size=1, max_size=5
    ),  # (size, compressible)
    max_size=st.integers(1, 20000),
    max_ratio=st.floats(1, 200),
)
def test_extraction_obeys_both_limits(
    entries: list[tuple[int, bool]], max_size: int, max_ratio: float
) -> None:
    rng = np.random.default_rng(len(entries))
    data = {f"e{i}": bytes(size) if zeros else rng.bytes(size) for i, (size, zeros) in enumerate(entries)}
    with tempfile.TemporaryDirectory() as tmp:
        archive = _zip(Path(tmp) / "a.zip", data)
        with zipfile.ZipFile(archive) as zipped:
            infos = zipped.infolist()
        allowed = sum(i.file_size for i in infos) <= max_size and all(
            i.file_size <= max_ratio * max(i.compress_size, 1) for i in infos
        )
        limits = ArchiveLimits(max_size=max_size, max_ratio=max_ratio)
        if allowed:
            safe_extract(archive, Path(tmp) / "out", limits)
            assert {p.name: p.read_bytes() for p in (Path(tmp) / "out").iterdir()} == data
        else:
            with pytest.raises(DataError, match="entr"):
                safe_extract(archive, Path(tmp) / "out", limits)
            assert not (Path(tmp) / "out").exists()


def test_training_data_in_a_zip_bomb_is_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "data.zip", {"Healthy/a.png": _png((40, 40), 90), "Tumor/z": bytes(5_000_000)})
    (tmp_path / "work").mkdir()
    with pytest.raises(DataError, match="entry 'Tumor/z'"):
        fetch(LocalData(source="local", path=archive), tmp_path / "work" / "raw", 0)
    assert list((tmp_path / "work").iterdir()) == []


def test_predict_refuses_a_zip_bomb_and_a_truncated_zip_in_one_line(
    packaged_detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = _zip(tmp_path / "bomb.zip", {"zeros.png": bytes(20_000_000)})
    code, _, err = _predict(capsys, bomb, packaged_detector, tmp_path / "s.csv")
    assert code == 1 and "error: " in err and "entry 'zeros.png'" in err and "archive.max_ratio" in err
    good = _zip(tmp_path / "good.zip", {"a.png": _png((40, 40), 90)})
    (tmp_path / "cut.zip").write_bytes(good.read_bytes()[:60])
    code, _, err = _predict(capsys, tmp_path / "cut.zip", packaged_detector, tmp_path / "s.csv")
    assert code == 1 and "truncated or corrupt zip" in err


# 3. A slice with nothing to score gets a reason, not a score.


def _slope_zero(tmp_path: Path) -> Path:
    path = write_ct_slice(tmp_path / "slope.dcm", np.random.default_rng(0).uniform(-1000, 100, (40, 40)))
    dataset = pydicom.dcmread(path)
    dataset.RescaleSlope = 0
    dataset.save_as(path)
    return path


NOTHING_TO_SCORE = {
    "nan.tif": (lambda tmp: _tiff(np.where(_head() > 0, 1.0, np.nan)), "non-finite pixel values"),
    "inf.tif": (lambda tmp: _tiff(np.where(_head() > 0, np.inf, 0.0)), "non-finite pixel values"),
    "black.png": (lambda tmp: _png((64, 64)), "no head found"),
    "grey.png": (lambda tmp: _png((64, 64), 128), "no head found"),
    "dark.png": (lambda tmp: _png((64, 64), 20), "no head found"),
    "dot.png": (lambda tmp: _png((1, 1), 200), "too small: 1x1 pixels"),
    "strip.png": (lambda tmp: _png((5000, 3), 200), "too small: 5000x3 pixels"),
    "slope.dcm": (_slope_zero, "RescaleSlope is 0"),
}


@pytest.mark.parametrize("name", list(NOTHING_TO_SCORE))
def test_a_slice_with_nothing_to_score_is_refused(name: str, tmp_path: Path) -> None:
    make, reason = NOTHING_TO_SCORE[name]
    made = make(tmp_path)
    source = made if isinstance(made, bytes) else made.read_bytes()
    assert reason in _reason(source, name)


@EXAMPLES
@given(
    mode=st.sampled_from(["L", "RGB", "RGBA", "I;16", "F", "1", "P"]),
    width=st.integers(1, 80),
    height=st.integers(1, 80),
    value=st.integers(0, 255),
)
def test_a_uniform_image_of_any_mode_and_size_is_never_scored(
    mode: str, width: int, height: int, value: int
) -> None:
    if mode == "F":
        data = _tiff(np.full((height, width), float(value)))
    else:
        data = _png((width, height), (value,) * 3 if mode in ("RGB", "RGBA") else value, mode)
    assert _reason(data).startswith(("too small", "no head found"))


def _write_nothing_to_score(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    reasons = {}
    for name, (make, reason) in NOTHING_TO_SCORE.items():
        made = make(folder)
        if isinstance(made, bytes):
            (folder / name).write_bytes(made)
        reasons[name] = reason
    return reasons


def test_predict_gives_each_an_error_and_no_score(
    packaged_detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reasons = _write_nothing_to_score(tmp_path / "in")
    Image.fromarray(_head()).save(tmp_path / "in" / "head.png")
    code, scores, err = _predict(capsys, tmp_path / "in", packaged_detector, tmp_path / "s.csv")
    assert code == 0
    rows = scores.assign(name=scores["path"].map(lambda p: Path(p).name)).set_index("name")
    for name, reason in reasons.items():
        assert reason in rows.loc[name, "error"] and pd.isna(rows.loc[name, "score"])
        assert f"warning: {rows.loc[name, 'path']}: {rows.loc[name, 'error']}" in err
    assert pd.isna(rows.loc["head.png", "error"]) and rows.loc["head.png", "score"] >= 0


def test_the_served_model_answers_a_client_error_with_the_reason(packaged_detector: Path) -> None:
    model = mlflow.pyfunc.load_model(str(packaged_detector))
    for data, reason in [
        (_png((5000, 4000)), "5000x4000 pixels is above preprocess.max_pixels"),
        (_png((64, 64)), "no head found"),
        (_png((5000, 3), 200), "too small"),
    ]:
        with pytest.raises(MlflowException, match=f"row 0: {reason}") as raised:
            model.predict(pd.DataFrame({"image": [data]}))
        assert raised.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)  # HTTP 400


def test_training_data_with_nothing_to_score_goes_to_the_rejects(tmp_path: Path) -> None:
    reasons = _write_nothing_to_score(tmp_path / "raw" / "Healthy")
    (tmp_path / "raw" / "Healthy" / "huge.png").write_bytes(_png((5000, 4000)))
    reasons["huge.png"] = "5000x4000 pixels is above preprocess.max_pixels"
    (tmp_path / "raw" / "Tumor").mkdir()
    Image.fromarray(_head()).save(tmp_path / "raw" / "Tumor" / "head.png")
    manifest, rejects = build_manifest(tmp_path / "raw", CONFIG, progress=False)
    assert manifest["path"].tolist() == ["Tumor/head.png"]
    by_file = dict(zip(rejects["path"].map(lambda p: Path(p).name), rejects["reason"], strict=True))
    assert set(by_file) == set(reasons) and all(reasons[n] in by_file[n] for n in reasons)


def test_the_built_in_slices_pass_every_rule(tmp_path: Path) -> None:
    data = SyntheticData(source="synthetic", n_healthy=20, n_tumor=8, min_size=32, max_size=64)
    synthetic.generate(
        tmp_path, data.n_healthy, data.n_tumor, 0, min_size=data.min_size, max_size=data.max_size
    )
    manifest, rejects = build_manifest(tmp_path, CONFIG, progress=False)
    assert len(manifest) == 28 and rejects.empty


def test_a_volume_slice_outside_the_head_is_an_error() -> None:
    hu = np.full((3, 40, 40), -1000.0)
    hu[1, 10:30, 10:30] = 40.0
    batch = Detector(None, 0.5, CONFIG, score_config()).prepare_hounsfield(hu)
    assert batch.decoded.tolist() == [1] and set(batch.errors) == {0, 2}
    assert "no head found" in batch.errors[0]


# 10. Every file not scored has its line, and a file of another type than its name says is named so.


def test_files_that_cannot_be_read_at_all_are_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "locked").mkdir()
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    scandir = os.scandir

    def refusing(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    files, problems = list_files(tmp_path)
    assert files == [tmp_path / "a.png"]
    assert dict(problems) == {
        tmp_path / "gone.png": f"a dangling symbolic link (to {tmp_path / 'nowhere.png'})",
        tmp_path / "locked": "unreadable folder (Permission denied)",
    }


def test_predict_has_a_row_for_every_file_it_did_not_score(
    packaged_detector: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_head()).save(folder / "head.png")
    (folder / "png.dcm").write_bytes((folder / "head.png").read_bytes())
    (folder / "table.csv").write_text("path,class\na.png,healthy\n")
    good = _zip(tmp_path / "g.zip", {"a.png": _png((40, 40), 90)})
    (folder / "cut.zip").write_bytes(good.read_bytes()[:60])
    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    frames = [Image.fromarray(_head()), Image.fromarray(255 - _head())]
    frames[0].save(folder / "pages.tif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "moving.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING):
        code, scores, err = _predict(capsys, folder, packaged_detector, tmp_path / "s.csv")
    assert code == 0
    errors = dict(zip(scores["path"].map(lambda p: Path(p).name), scores["error"], strict=True))
    assert errors["png.dcm"] == "a PNG file named .dcm"
    assert errors["table.csv"] == "not an image: a text file"
    assert errors["cut.zip"] == "truncated or corrupt zip"
    assert errors["gone.png"].startswith("a dangling symbolic link")
    assert all(pd.isna(errors[name]) for name in ("head.png", "pages.tif", "moving.gif"))
    for name in ("png.dcm", "table.csv", "cut.zip", "gone.png"):
        assert f"{name}: {errors[name]}" in err
    for name, kind in (("pages.tif", "TIFF"), ("moving.gif", "GIF")):
        assert f"{name}: a {kind} of several frames: only frame 1 is used" in caplog.text


def test_training_data_that_cannot_be_read_goes_to_the_rejects(tmp_path: Path) -> None:
    for cls in ("Healthy", "Tumor"):
        (tmp_path / "in" / cls).mkdir(parents=True)
        Image.fromarray(_head()).save(tmp_path / "in" / cls / "a.png")
    (tmp_path / "in" / "Tumor" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    rejects = fetch(LocalData(source="local", path=tmp_path / "in"), tmp_path / "raw", 0)
    assert rejects == [("Tumor/gone.png", f"a dangling symbolic link (to {tmp_path / 'nowhere.png'})")]


@EXAMPLES
@given(kind=st.sampled_from(["PNG", "JPEG", "GIF", "TIFF"]), extra=st.binary(max_size=64))
def test_an_image_named_dcm_is_named_by_its_bytes(kind: str, extra: bytes) -> None:
    image = io.BytesIO()
    Image.fromarray(_head()).save(image, format=kind)
    assert file_type(image.getvalue()[:512]) == kind
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slice.dcm"
        path.write_bytes(image.getvalue() + extra)
        assert _reason(path) == f"a {kind} file named .dcm"


@EXAMPLES
@given(text=st.text(st.characters(min_codepoint=0x80, exclude_categories=["Cs"]), min_size=1, max_size=400))
def test_text_is_text_even_where_its_first_bytes_cut_a_character(text: str) -> None:
    assert file_type(text.encode()[:512]) == "text"
    assert file_type(b"\x00" + text.encode()) is None
