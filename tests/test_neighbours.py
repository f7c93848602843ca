"""Neighbouring slices as input channels (`preprocess.neighbours`, 2.5D): the stacking function, the
config key, scores that read the slice's own channels alone, and the same channels for a slice whether it
comes from a prepared split, a NIfTI volume or a DICOM series through predict."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import predict
from pipeline.core.config import DicomWindow, Settings
from pipeline.core.errors import ConfigError
from pipeline.data.datasets import for_data, load_split
from pipeline.data.guards import Limits
from pipeline.data.neighbours import frame_keys, stack_neighbours
from pipeline.data.volumes import open_volume
from pipeline.detection.detector import Detector
from pipeline.models import build_model
from pipeline.stages import packaging
from pipeline.stages.entrypoint import compose, load_settings
from tests.conftest import preprocess_config, score_config
from tests.volume_factory import head_volume, write_series, write_volume

SUBDURAL = DicomWindow(level=75, width=215)


def _batch(values: list[float], channels: int = 1) -> np.ndarray:
    """(len(values), 2, 2, channels): row i is `values[i]` in channel 0 and -1 in the others."""
    batch = np.full((len(values), 2, 2, channels), -1.0, np.float32)
    batch[..., 0] = np.asarray(values, np.float32)[:, None, None]
    return batch


def _channels(stacked: np.ndarray) -> list[list[float]]:
    return stacked[:, 0, 0, :].tolist()


# --- the stacking function ---------------------------------------------------------------------------


def test_neighbours_come_in_order_after_the_own_channels_and_ends_repeat_the_centre() -> None:
    images = _batch([10, 11, 12, 13], channels=2)
    stacked = stack_neighbours(images, ["a"] * 4, [0, 1, 2, 3], 2)
    assert stacked.shape == (4, 2, 2, 6) and stacked.dtype == np.float32
    # own (brain, extra window), then k-1, k+1, k-2, k+2
    assert _channels(stacked) == [
        [10, -1, 10, 11, 10, 12],
        [11, -1, 10, 12, 11, 13],
        [12, -1, 11, 13, 10, 12],
        [13, -1, 12, 13, 11, 13],
    ]


def test_scans_interleaved_lone_images_and_missing_neighbours() -> None:
    """Rows in any order, two scans interleaved (same series name, other patient), lone images among
    them, and a slice missing from the data (scan b has no slice 2)."""
    images = _batch([21, 10, 99, 11, 23, 12, 20])
    scans = [("p2", "s"), ("p1", "s"), None, ("p1", "s"), ("p2", "s"), ("p1", "s"), ("p2", "s")]
    slices = [1, 0, None, 1, 3, 2, 0]
    assert _channels(stack_neighbours(images, scans, slices, 1)) == [
        [21, 20, 21],  # p2 slice 1: slice 0 below, slice 2 missing
        [10, 10, 11],
        [99, 99, 99],  # a lone image
        [11, 10, 12],
        [23, 23, 23],  # p2 slice 3: slice 2 missing, no slice 4
        [12, 11, 12],
        [20, 20, 21],
    ]


def test_no_neighbours_leave_the_batch_as_it_is() -> None:
    images = _batch([1, 2, 3])
    assert stack_neighbours(images, ["a"] * 3, [0, 1, 2], 0) is images


def test_frame_keys_read_patient_series_and_slice() -> None:
    frame = pd.DataFrame(
        {
            "patient": ["p1", "p1", "", "p2"],
            "series": ["s", "s", "", "s"],
            "slice": pd.array([0, 1, pd.NA, 4], dtype="Int64"),
        }
    )
    assert frame_keys(frame) == ([("p1", "s"), ("p1", "s"), None, ("p2", "s")], [0, 1, None, 4])
    assert frame_keys(pd.DataFrame({"path": ["a.png"]})) == ([None], [None])


# --- the config --------------------------------------------------------------------------------------


def test_neighbours_is_a_config_key_with_its_channels() -> None:
    default = load_settings(compose([])).preprocess
    assert default.neighbours == 0 and default.channels == default.scored_channels
    settings = load_settings(
        compose(
            [
                "data=synthetic_volumes",
                "preprocess.extra_windows=[{level:75,width:215}]",
                "preprocess.neighbours=2",
            ]
        )
    )
    assert settings.preprocess.scored_channels == 2 and settings.preprocess.channels == 6
    with pytest.raises(ConfigError, match="neighbours"):
        load_settings(compose(["preprocess.neighbours=-1"]))


# --- scores --------------------------------------------------------------------------------------------


def test_scores_and_maps_ignore_an_anomaly_seen_only_on_a_neighbour() -> None:
    config = preprocess_config(32).model_copy(update={"neighbours": 1})
    detector = Detector.uncalibrated(None, config, score_config("mse", region="head"))  # no model needed
    yy, xx = np.mgrid[:32, :32]
    head = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= 196).astype(np.float32)
    image = np.stack([0.5 * head] * 3, axis=-1)[None]
    on_neighbour, on_slice = image.copy(), image.copy()
    on_neighbour[0, 10:14, 20:24, 2] += 0.3  # what the model could not redraw, on slice k+1 only
    on_slice[0, 10:14, 20:24, 0] += 0.3
    clean = detector.all_scores(image, image)
    for kind, scores in detector.all_scores(image, on_neighbour).items():
        assert scores[0] == clean[kind][0], kind
    assert detector.all_scores(image, on_slice)["mse"][0] > clean["mse"][0] + 1e-3
    np.testing.assert_array_equal(
        detector.residual_maps(image, on_neighbour), detector.residual_maps(image, image)
    )
    assert detector.residual_maps(image, on_slice).max() > 0.1


def test_a_lone_image_gets_its_own_brain_window_as_neighbours(tmp_path: Path) -> None:
    from pipeline.data.dicom import write_ct_slice

    path = write_ct_slice(tmp_path / "one.dcm", head_volume(48, 1, seed=1)[..., 0])
    config = preprocess_config(32, head=True).model_copy(update={"neighbours": 1})
    batch = Detector.uncalibrated(None, config, score_config()).decode([path], ["one.dcm"])
    assert batch.images.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(batch.images[..., 1], batch.images[..., 0])
    np.testing.assert_array_equal(batch.images[..., 2], batch.images[..., 0])


# --- every path gives a slice the same channels ---------------------------------------------------------


def _write_split(
    settings: Settings, name: str, files: list[Path], classes: list[str], slices: list[int] | None = None
) -> None:
    raw = settings.paths.raw
    settings.paths.splits.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "path": [file.relative_to(raw).as_posix() for file in files],
            "class": classes,
            "sha256": [hashlib.sha256(file.read_bytes()).hexdigest() for file in files],
            "patient": "p1",
            "series": "ct",
            "slice": range(len(files)) if slices is None else slices,
            "slices": len(files) if slices is None else max(slices) + 1,
        }
    ).to_csv(settings.paths.splits / f"{name}.csv", index=False)


def test_a_split_stacks_neighbours_before_keeping_one_class(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        "data=synthetic_volumes", "preprocess.extra_windows=[]", "preprocess.neighbours=1"
    )
    hu = np.round(head_volume(32, 4, seed=3)).transpose(2, 0, 1)
    files = write_series(settings.paths.raw / "Healthy" / "p1", hu)
    _write_split(settings, "val", files, ["Healthy", "Tumor", "Healthy", "Healthy"])
    whole = load_split(settings, "val")
    healthy = load_split(settings, "val", only_class="Healthy")
    assert whole.images.shape == (4, 32, 32, 3) and healthy.images.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(healthy.images, whole.images[[0, 2, 3]])
    np.testing.assert_array_equal(healthy.images[1, ..., 1], whole.images[1, ..., 0])  # the tumor slice
    assert len(list(settings.paths.cache.glob("*.npy"))) == 1  # one cached array: each file's own channels


def _predicted_inputs(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> list[np.ndarray]:
    """The model inputs of each batch `predict.main` scores under tmp_path/in, `chunk` slices at a time,
    with an untrained detector of `settings.preprocess` (its scores go to tmp_path/scores.csv)."""
    size, channels = settings.preprocess.image_size, settings.preprocess.channels
    model = build_model("cae", (size, size, channels), {"width": 4, "depth": 2, "latent_dim": 8})
    detector = Detector(model, 0.05, settings.preprocess, score_config(region="head"), {"run_id": "t"})
    packaging.save(detector, tmp_path / "detector")
    seen: list[np.ndarray] = []
    scored = Detector.reconstruct_and_score

    def record(self: Detector, images: np.ndarray, levels: np.ndarray | None = None) -> tuple:
        seen.append(images)
        return scored(self, images, levels)

    monkeypatch.setattr(Detector, "reconstruct_and_score", record)
    monkeypatch.setattr(predict, "CHUNK", chunk)
    out = str(tmp_path / "scores.csv")
    assert predict.main([str(tmp_path / "in"), "--model", str(tmp_path / "detector"), "--out", out]) == 0
    return seen


def test_predict_gives_volume_and_series_slices_the_channels_of_the_prepared_split(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """7 slices scored 3 at a time: the slab edges see the slices of the next slab as neighbours."""
    settings = make_settings(
        "data=synthetic_volumes", "preprocess.extra_windows=[{level:75,width:215}]", "preprocess.neighbours=1"
    )
    volume_file = write_volume(tmp_path / "in" / "head.nii.gz", np.round(head_volume(40, 7, seed=5)))
    with open_volume(volume_file, Limits.of(settings.preprocess)) as volume:
        displayed = volume.read(0, volume.count)  # inferior to superior, as a series is written
    files = write_series(settings.paths.raw / "Healthy" / "p1", displayed)
    write_series(tmp_path / "in" / "series", displayed)
    _write_split(settings, "test", files, ["Healthy"] * 7)
    prepared = load_split(settings, "test").images
    assert prepared.shape == (7, 32, 32, 4)

    seen = _predicted_inputs(settings, tmp_path, monkeypatch, chunk=3)
    assert [len(images) for images in seen] == [3, 3, 1, 3, 3, 1]  # the volume's slabs, the series' chunks
    from_volume, from_series = np.concatenate(seen[:3]), np.concatenate(seen[3:])
    np.testing.assert_allclose(from_volume, prepared, atol=1e-6)
    np.testing.assert_allclose(from_series, prepared, atol=1e-6)
    rows = pd.read_csv(tmp_path / "scores.csv")
    assert rows["score"].notna().sum() == 14 and rows["error"].isna().all()


def test_the_blanked_copy_gets_its_neighbours_from_the_frame(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`evaluate`'s outside-head-blanked copy: each slice's neighbours are its scan's blanked slices."""
    from pipeline.stages.evaluate import _blanked_scores

    settings = make_settings(
        "data=synthetic_volumes", "preprocess.extra_windows=[{level:75,width:215}]", "preprocess.neighbours=1"
    )
    hu = np.round(head_volume(40, 4, seed=6)).transpose(2, 0, 1)
    files = write_series(settings.paths.raw / "Healthy" / "p1", hu)
    _write_split(settings, "test", files, ["Healthy"] * 4)
    split = load_split(settings, "test")
    seen: list[np.ndarray] = []
    monkeypatch.setattr(Detector, "score", lambda self, images, levels=None: seen.append(images) or levels)
    detector = Detector.uncalibrated(None, settings.preprocess, score_config(region="head"))
    _blanked_scores(detector, settings, split)
    blanked = seen[0]
    assert blanked.shape == (4, 32, 32, 4)
    np.testing.assert_array_equal(blanked[..., 2], blanked[[0, 0, 1, 2], ..., 0])  # k-1
    np.testing.assert_array_equal(blanked[..., 3], blanked[[1, 2, 3, 3], ..., 0])  # k+1
    np.testing.assert_allclose(blanked, split.images, atol=0.02)  # a DICOM copy: the same HU inside the head


def test_a_series_with_a_missing_slice_has_no_neighbours_across_the_gap(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Predict numbers a series' slices by position, as the manifest does: the slices either side of a
    missing one see themselves there, in predict as in the prepared split."""
    settings = make_settings(
        "data=synthetic_volumes", "preprocess.extra_windows=[]", "preprocess.neighbours=1"
    )
    hu = np.round(head_volume(40, 5, seed=7)).transpose(2, 0, 1)
    files = write_series(settings.paths.raw / "Healthy" / "p1", hu)
    folder = tmp_path / "in" / "series"
    write_series(folder, hu)
    files.pop(3).unlink()
    (folder / "IM0003.dcm").unlink()
    _write_split(settings, "test", files, ["Healthy"] * 4, slices=[0, 1, 2, 4])
    prepared = load_split(settings, "test").images
    np.testing.assert_array_equal(prepared[2, ..., 2], prepared[2, ..., 0])  # slice 2: no slice 3 above
    np.testing.assert_array_equal(prepared[3, ..., 1], prepared[3, ..., 0])  # slice 4: none below

    seen = _predicted_inputs(settings, tmp_path, monkeypatch, chunk=2)
    np.testing.assert_allclose(np.concatenate(seen), prepared, atol=1e-6)


def test_neighbours_go_for_data_without_scans_and_stay_for_scans(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """2D images have no slices above and below: the stages drop `neighbours` there, as they drop the
    Hounsfield windows for PNG, and say so once."""
    settings = make_settings(
        "preprocess.neighbours=1", "preprocess.extra_windows=[]", "train.bleeds.probability=0"
    )
    settings.paths.manifests.mkdir(parents=True, exist_ok=True)
    lone = pd.DataFrame({"path": ["a.png", "b.png"], "format": "PNG", "slice": pd.NA, "slices": pd.NA})
    lone.to_csv(settings.paths.manifests / "raw.csv", index=False)
    with caplog.at_level(logging.INFO, logger="pipeline.data.datasets"):
        resolved = [for_data(settings) for _ in range(2)]
    assert all(r.preprocess.neighbours == 0 and r.preprocess.channels == 1 for r in resolved)
    assert [r.getMessage() for r in caplog.records] == [
        "the prepared data holds no slice of a scan: preprocess.neighbours, the slices above and below, "
        "apply to scans (NIfTI volumes, DICOM series); the detector reads each slice alone"
    ]
    scans = lone.assign(path=["a.dcm", "b.dcm"], format="DICOM", slice=[0, 1], slices=2)
    scans.to_csv(settings.paths.manifests / "raw.csv", index=False)  # downloaded again: a scan
    assert for_data(settings) == settings and for_data(settings).preprocess.channels == 3
