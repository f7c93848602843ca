"""Several Hounsfield windows (`preprocess.extra_windows`, subdural and bone by default): a slice in HU
becomes one input channel per window, channel 0 the brain window as before; an already windowed image is
refused, one file's error; training, scoring, maps, the decode cache and the served model handle the
channels; without extra windows (what the stages run with on PNG or JPEG training data) the model input
is what it always was."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import keras
import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from pipeline import predict
from pipeline.core.config import DicomWindow, PreprocessConfig, Settings
from pipeline.core.errors import ConfigError, ImageDecodeError
from pipeline.data.datasets import for_data
from pipeline.data.dicom import write_ct_slice
from pipeline.data.images import (
    blanked_copy,
    decode,
    load_cached,
    load_channels,
    load_image,
    load_images,
    preprocess,
)
from pipeline.data.manifest import MANIFEST_COLUMNS
from pipeline.detection import scoring
from pipeline.detection.detector import Detector
from pipeline.models import build_model
from pipeline.models.training import fit, training_batches
from pipeline.stages import packaging
from pipeline.stages.entrypoint import compose, load_settings
from tests.conftest import BRAIN_WINDOW, preprocess_config, score_config, train_config, write_scans
from tests.volume_factory import head_volume

SUBDURAL = DicomWindow(level=75, width=215)
BONE = DicomWindow(level=600, width=2800)


def _windows(config: PreprocessConfig, *windows: DicomWindow) -> PreprocessConfig:
    return config.model_copy(update={"extra_windows": windows})


def _crescent_slice(size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU: a 1000-HU skull around 35-HU brain, with a 60-HU crescent of acute blood along the skull's
    inner table on one side; and the crescent's and the bone's pixels."""
    y, x = (np.mgrid[:size, :size] - (size - 1) / 2) / (size / 2)
    radius = np.hypot(x, y)
    hounsfield = np.full((size, size), -1000.0, np.float32)
    hounsfield[radius < 0.85] = 1000.0
    hounsfield[radius < 0.75] = 35.0
    crescent = (radius < 0.75) & (radius > 0.62) & (x > 0.3)
    hounsfield[crescent] = 60.0
    return hounsfield, crescent, (radius < 0.85) & (radius > 0.75)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A DICOM slice of a head in HU, the crescent slice, and an 8-bit PNG of a head."""
    paths = {
        "dicom": tmp_path / "head.dcm",
        "crescent": tmp_path / "crescent.dcm",
        "png": tmp_path / "head.png",
    }
    write_ct_slice(paths["dicom"], head_volume(48, 1, seed=1)[..., 0])
    write_ct_slice(paths["crescent"], _crescent_slice()[0])
    disc = np.hypot(*(np.mgrid[:48, :48] - 23.5)) < 18
    pixels = np.where(disc, np.random.default_rng(0).integers(60, 200, (48, 48)), 0).astype(np.uint8)
    Image.fromarray(pixels).save(paths["png"])
    return paths


# --- the model input ---------------------------------------------------------------------------------


def test_the_subdural_window_separates_a_crescent_of_blood_from_bone(files: dict[str, Path]) -> None:
    _, crescent, bone = _crescent_slice()
    image = load_channels(files["crescent"], _windows(preprocess_config(128), SUBDURAL))
    assert image.shape == (128, 128, 2) and image.dtype == np.float32
    brain, subdural = image[..., 0], image[..., 1]
    brain_gap = brain[bone].mean() - brain[crescent].mean()
    subdural_gap = subdural[bone].mean() - subdural[crescent].mean()
    assert brain_gap < 0.3  # 60 HU is three quarters of the brain window: bone clips barely above it
    assert subdural_gap > 0.5 and subdural_gap > 2 * brain_gap


def test_extra_channels_have_channel_zeros_geometry_and_no_stretch(files: dict[str, Path]) -> None:
    """Through the brain window again, an extra channel is channel 0 before the intensity stretch: the
    same blanking, crop, padding and resizing."""
    config = preprocess_config(32, head=True)
    stretched = load_channels(files["dicom"], _windows(config, BRAIN_WINDOW))
    plain = load_channels(
        files["dicom"], _windows(config.model_copy(update={"normalize": False}), BRAIN_WINDOW)
    )
    np.testing.assert_array_equal(plain[..., 1], plain[..., 0])
    np.testing.assert_array_equal(stretched[..., 1], plain[..., 0])
    assert not np.array_equal(stretched[..., 0], plain[..., 0])


@pytest.mark.parametrize("kind", ["dicom", "png"])
@pytest.mark.parametrize("head", [False, True])
def test_without_extra_windows_the_input_is_todays(files: dict[str, Path], kind: str, head: bool) -> None:
    """The default (`extra_windows: []`): one channel, the decoded slice preprocessed as before."""
    config = preprocess_config(32, head=head)
    assert config.extra_windows == () and config.channels == 1
    decoded = decode(files[kind], config)
    today = preprocess(decoded.pixels, config, mask=decoded.head)[0]
    image = load_channels(files[kind], config)
    assert image.shape == (32, 32, 1)
    np.testing.assert_array_equal(image[..., 0], today)
    np.testing.assert_array_equal(load_image(files[kind], config), today)
    batch = Detector.uncalibrated(
        build_model("cae", (32, 32, 1), {"width": 4, "depth": 2, "latent_dim": 8}), config, score_config()
    ).decode([files[kind]], [kind])
    np.testing.assert_array_equal(batch.images, today[None, ..., None])


def test_a_windowed_image_with_extra_windows_is_one_files_error(files: dict[str, Path]) -> None:
    config = _windows(preprocess_config(32, head=True), SUBDURAL, BONE)
    with pytest.raises(ImageDecodeError, match=r"head\.png: a PNG image holds one window") as err:
        load_images([files["dicom"], files["png"]], config, progress=False)
    assert "3 Hounsfield windows (preprocess.extra_windows): give it DICOM or NIfTI" in str(err.value)
    model = build_model("cae", (32, 32, 3), {"width": 4, "depth": 2, "latent_dim": 8})
    batch = Detector.uncalibrated(model, config, score_config()).decode(
        [files["png"], files["dicom"]], ["head.png", "head.dcm"]
    )
    assert list(batch.decoded) == [1] and batch.images.shape == (1, 32, 32, 3)
    assert list(batch.errors) == [0] and "a PNG image holds one window" in batch.errors[0]


def test_volume_slices_get_the_channels_a_dicom_file_of_them_gets(
    files: dict[str, Path], tmp_path: Path
) -> None:
    config = _windows(preprocess_config(32, head=True), SUBDURAL)
    detector = Detector.uncalibrated(
        build_model("cae", (32, 32, 2), {"width": 4, "depth": 2, "latent_dim": 8}), config, score_config()
    )
    volume = np.round(head_volume(48, 3, seed=2))  # a DICOM file stores whole HU
    paths = [write_ct_slice(tmp_path / f"{k}.dcm", volume[..., k]) for k in range(3)]
    from_volume = detector.prepare_hounsfield([volume[..., k] for k in range(3)])
    from_files = detector.decode(paths, [str(p) for p in paths])
    assert from_volume.images.shape == (3, 32, 32, 2) and not from_volume.errors
    np.testing.assert_allclose(from_volume.images, from_files.images, atol=1e-6)


def test_the_decode_cache_key_holds_the_windows(files: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    paths = [files["dicom"], files["crescent"]]
    one = load_cached(paths, ["a", "b"], preprocess_config(32), cache, progress=False)
    two = load_cached(paths, ["a", "b"], _windows(preprocess_config(32), SUBDURAL), cache, progress=False)
    three = load_cached(paths, ["a", "b"], _windows(preprocess_config(32), BONE), cache, progress=False)
    assert one.shape[-1] == 1 and two.shape[-1] == three.shape[-1] == 2
    assert len(list(cache.glob("*.npy"))) == 3
    np.testing.assert_array_equal(two[..., 0], one[..., 0])
    assert not np.array_equal(two[..., 1], three[..., 1])


def test_the_blanked_copy_of_a_slice_read_in_several_windows_keeps_its_hounsfield_units(
    files: dict[str, Path],
) -> None:
    config = _windows(preprocess_config(32, head=True), SUBDURAL)
    copy = blanked_copy(files["dicom"], config)
    assert copy[128:132] == b"DICM"
    np.testing.assert_allclose(
        load_channels(copy, config, "copy.dcm"), load_channels(files["dicom"], config), atol=0.02
    )
    assert blanked_copy(files["dicom"], preprocess_config(32, head=True)).startswith(b"\x89PNG")


# --- training, scores and maps -------------------------------------------------------------------------


def test_every_channel_gets_the_same_geometric_augmentation_and_its_own_noise() -> None:
    yy, xx = np.mgrid[:16, :16]
    disc = ((yy - 7.5) ** 2 + (xx - 7.5) ** 2 <= 36) * np.random.default_rng(0).uniform(0.2, 0.8, (8, 16, 16))
    twins = np.repeat(disc[..., None], 2, axis=-1).astype(np.float32)
    inputs, targets = next(iter(training_batches(twins, train_config(batch_size=8, noise=0.2), seed=0)))
    targets, inputs = targets.numpy(), inputs.numpy()
    np.testing.assert_array_equal(targets[..., 0], targets[..., 1])  # rotated, shifted, flipped alike
    assert not np.array_equal(inputs[..., 0], inputs[..., 1])  # denoising noise drawn per channel


def test_a_two_channel_model_trains_and_scores(files: dict[str, Path], tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    config = _windows(preprocess_config(32, head=True), SUBDURAL)
    paths = []
    for k in range(8):
        paths.append(write_ct_slice(tmp_path / f"{k}.dcm", head_volume(48, 8, seed=k)[..., 3 + k % 2]))
    images = load_images(paths, config, progress=False)
    assert images.shape == (8, 32, 32, 2)
    model = build_model("cae", images.shape[1:], {"width": 4, "depth": 2, "latent_dim": 8})
    assert model.output_shape == (None, 32, 32, 2)
    result = fit(model, images, images, train_config(batch_size=4), seed=0, callbacks=[])
    assert len(result.history["loss"]) == 1 and np.isfinite(result.history["loss"]).all()
    for kind in scoring.SCORES.names():
        detector = Detector.uncalibrated(model, config, score_config(kind, region="head"))
        reconstructions, scores = detector.reconstruct_and_score(images)
        assert scores.shape == (8,) and np.isfinite(scores).all(), kind
    maps = detector.residual_maps(images, reconstructions)
    assert maps.shape == (8, 32, 32) and np.isfinite(maps).all()


def test_a_residual_in_any_window_counts_for_the_residual_scores_and_maps() -> None:
    """`mse`, `l1`, `residual_percentile` and the maps read a pixel's largest residual over the channels;
    `ssim` and `symmetry` read channel 0 (the brain window)."""
    yy, xx = np.mgrid[:32, :32]
    head = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= 196).astype(np.float32)
    image = np.stack([0.5 * head, 0.4 * head], axis=-1)[None]
    only_second = image.copy()
    only_second[0, 10:14, 20:24, 1] += 0.3  # what the model could not redraw, seen in window 2 only
    config = score_config("mse", region="head")
    clean = scoring.score_all(image, image, config, 0.1)
    spoiled = scoring.score_all(image, only_second, config, 0.1)
    for kind in ("mse", "l1", "residual_percentile"):
        assert spoiled[kind][0] > clean[kind][0] + 1e-3, kind
    for kind in ("ssim", "symmetry"):
        assert spoiled[kind][0] == clean[kind][0], kind
    maps = scoring.residual_maps(image, only_second, config, 0.1)
    assert maps.shape == (1, 32, 32) and maps[0, 12, 22] > 0.1
    one_channel = scoring.residual_maps(image[..., 1:], only_second[..., 1:], config, 0.1)
    np.testing.assert_allclose(maps, one_channel, atol=1e-6)  # the other channel has no residual


# --- the served model ----------------------------------------------------------------------------------


def test_the_served_model_scores_a_dicom_in_two_windows_and_refuses_a_png(
    files: dict[str, Path], tmp_path: Path
) -> None:
    keras.utils.set_random_seed(0)
    config = _windows(preprocess_config(32, head=True), SUBDURAL)
    model = build_model("cae", (32, 32, 2), {"width": 8, "depth": 2, "latent_dim": 16})
    detector = Detector(model, 0.05, config, score_config(region="head"), {"run_id": "test-run"})
    folder = tmp_path / "detector"
    packaging.save(detector, folder)
    served = mlflow.pyfunc.load_model(str(folder))
    result = served.predict(
        pd.DataFrame({"image": [files["dicom"].read_bytes(), files["crescent"].read_bytes()]})
    )
    direct = detector.score(np.stack([load_channels(files[k], config) for k in ("dicom", "crescent")]))
    np.testing.assert_allclose(result["score"], direct, rtol=1e-5)
    with pytest.raises(MlflowException, match="row 1: a PNG image holds one window"):
        served.predict(pd.DataFrame({"image": [files["dicom"].read_bytes(), files["png"].read_bytes()]}))


# --- the config --------------------------------------------------------------------------------------


def test_the_default_windows_are_subdural_and_bone_for_any_data() -> None:
    """The built-in PNG slices compose with them too: the stages drop them there (`for_data`)."""
    for data in ("synthetic_volumes", "synthetic"):
        preprocess = load_settings(compose([f"data={data}"])).preprocess
        assert preprocess.extra_windows == (SUBDURAL, BONE) and preprocess.channels == 3
    settings = load_settings(compose(["preprocess.extra_windows=[{level:75,width:215}]"]))
    assert settings.preprocess.extra_windows == (SUBDURAL,) and settings.preprocess.channels == 2
    assert load_settings(compose(["preprocess.extra_windows=[]"])).preprocess.channels == 1
    with pytest.raises(ConfigError, match="extra_windows"):
        load_settings(compose(["data=synthetic_volumes", "preprocess.extra_windows=[{level:75,width:0}]"]))


def _manifest(settings: Settings, *formats: str) -> None:
    rows = [
        {
            "path": f"Healthy/{k}",
            "class": "healthy",
            "sha256": f"{k}",
            "phash": "0",
            "width": 48,
            "height": 48,
            "mode": "L",
            "format": fmt,
        }
        for k, fmt in enumerate(formats)
    ]
    settings.paths.manifests.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(settings.paths.manifests / "raw.csv", index=False)


def test_the_windows_stay_for_data_that_is_all_in_hounsfield_units(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    _manifest(settings, "DICOM", "DICOM", "DICOM")
    assert for_data(settings) == settings and for_data(settings).preprocess.channels == 3


def test_the_windows_go_for_data_with_any_windowed_image_and_a_log_line_says_so_once(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    _manifest(settings, "DICOM", "PNG", "PNG", "JPEG")
    with caplog.at_level(logging.INFO, logger="pipeline.data.datasets"):
        resolved = [for_data(settings) for _ in range(3)]
    assert all(r.preprocess.extra_windows == () and r.preprocess.channels == 1 for r in resolved)
    assert resolved[0].preprocess == settings.preprocess.model_copy(update={"extra_windows": ()})
    assert resolved[0].flat_params()["preprocess.extra_windows"] == "[]"  # what MLflow logs
    assert resolved[0].train.bleeds.probability == 0 < settings.train.bleeds.probability
    assert resolved[0].flat_params()["train.bleeds.probability"] == "0.0"
    changed = {"preprocess", "train"}
    assert resolved[0].model_dump(exclude=changed) == settings.model_dump(exclude=changed)
    assert resolved[0].train.model_dump(exclude={"bleeds"}) == settings.train.model_dump(exclude={"bleeds"})
    assert [r.getMessage() for r in caplog.records] == [
        "the prepared data holds 2 PNG and 1 JPEG slices (of 4), windowed already: the detector reads one "
        "channel and training draws no synthetic bleeds; preprocess.extra_windows and train.bleeds apply "
        "to Hounsfield inputs (DICOM, NIfTI)"
    ]
    _manifest(settings, "DICOM", "DICOM")  # downloaded again, now all in HU: read again
    assert for_data(settings).preprocess.channels == 3


def test_without_windows_and_bleeds_the_data_is_not_read(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("preprocess.extra_windows=[]", "train.bleeds.probability=0")
    assert not (settings.paths.manifests / "raw.csv").exists() and for_data(settings) is settings


def test_bleeds_alone_go_for_windowed_images_and_the_log_names_them(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings("preprocess.extra_windows=[]", "train.bleeds.probability=0.3")
    _manifest(settings, "PNG")
    with caplog.at_level(logging.INFO, logger="pipeline.data.datasets"):
        resolved = for_data(settings)
    assert resolved.train.bleeds.probability == 0 and resolved.preprocess == settings.preprocess
    assert (
        caplog.records[0]
        .getMessage()
        .endswith(
            "windowed already: training draws no synthetic bleeds; train.bleeds apply to Hounsfield inputs "
            "(DICOM, NIfTI)"
        )
    )
    _manifest(settings, "DICOM")
    assert for_data(settings) is settings


def test_predict_scores_dicom_and_volumes_in_two_windows_and_reports_each_windowed_image(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keras.utils.set_random_seed(0)
    config = _windows(preprocess_config(32, head=True), SUBDURAL)
    model = build_model("cae", (32, 32, 2), {"width": 4, "depth": 2, "latent_dim": 8})
    detector = Detector(model, 0.05, config, score_config(region="head"), {"run_id": "test-run"})
    packaging.save(detector, tmp_path / "detector")
    scans = write_scans(tmp_path / "scans")
    hu = np.round(head_volume(32, 4, seed=4)).astype(np.int16)
    volume_file = tmp_path / "scans" / "head.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.eye(4)), volume_file)
    out = tmp_path / "scores.csv"
    assert (
        predict.main([str(tmp_path / "scans"), "--model", str(tmp_path / "detector"), "--out", str(out)]) == 0
    )
    by_path = pd.read_csv(out).set_index("path")
    for kind in ("png", "jpeg"):
        error = by_path.loc[scans[kind].as_posix(), "error"]
        assert "image holds one window" in error and "2 Hounsfield windows" in error
        assert pd.isna(by_path.loc[scans[kind].as_posix(), "score"])
    assert f"warning: {scans['png'].as_posix()}" in capsys.readouterr().err
    dicom = scans["dicom"].as_posix()
    assert pd.isna(by_path.loc[dicom, "error"])
    assert by_path.loc[dicom, "score"] == pytest.approx(
        detector.score(load_channels(scans["dicom"], config)[None])[0], rel=1e-5
    )
    rows = by_path.loc[volume_file.as_posix()]
    assert len(rows) == 4 and rows["score"].notna().sum() >= 2
    assert rows.loc[rows["score"].notna(), "error"].isna().all()
