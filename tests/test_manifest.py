"""The manifest lists every usable image with its hashes and geometry; bad files become rejects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.classes import KINDS_FILE, add_kinds
from pipeline.data.dicom import write_ct_slice
from pipeline.data.manifest import (
    KIND_COLUMN,
    MANIFEST_COLUMNS,
    REJECT_COLUMNS,
    SCAN_COLUMNS,
    build_manifest,
    content_hash,
    frame_levels,
    read_manifest,
    scan_levels,
)
from tests.conftest import preprocess_config

CONFIG = preprocess_config(32)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "Healthy").mkdir()
    (tmp_path / "Tumor" / "nested").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 60), dtype=np.uint8)).save(tmp_path / "Healthy" / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "Healthy" / "b.jpg")
    rgba = rng.integers(0, 255, (36, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "Tumor" / "nested" / "c.png")
    (tmp_path / "Tumor" / "empty.jpg").write_bytes(b"")
    (tmp_path / "Tumor" / "notes.txt").write_text("not an image")
    jpeg = (tmp_path / "Healthy" / "b.jpg").read_bytes()
    (tmp_path / "Tumor" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return tmp_path


def test_manifest_rows_and_rejects(raw: Path) -> None:
    manifest, rejects = build_manifest(raw, CONFIG, progress=False)
    assert (
        list(manifest.columns) == [*MANIFEST_COLUMNS, *SCAN_COLUMNS, KIND_COLUMN]
        and list(rejects.columns) == REJECT_COLUMNS
    )
    assert (manifest[KIND_COLUMN] == "").all()  # no kinds recorded: none known
    assert (manifest["patient"] == "").all() and manifest["slice"].isna().all()  # lone images: no scan
    assert manifest["path"].tolist() == ["Healthy/a.png", "Healthy/b.jpg", "Tumor/nested/c.png"]
    row = manifest.set_index("path").loc["Healthy/a.png"]
    assert (row["class"], row["width"], row["height"], row["mode"], row["format"]) == (
        "healthy",
        60,
        40,
        "L",
        "PNG",
    )
    assert manifest.set_index("path").loc["Tumor/nested/c.png", "mode"] == "RGBA"
    assert dict(zip(rejects["path"], rejects["class"], strict=True)) == {
        "Tumor/cut.jpg": "tumor",
        "Tumor/empty.jpg": "tumor",
        "Tumor/notes.txt": "tumor",
    }
    assert all(rejects["reason"].str.len() > 0)


def test_content_hash_follows_content_not_names(raw: Path) -> None:
    manifest, _ = build_manifest(raw, CONFIG, progress=False)
    renamed = manifest.assign(path=manifest["path"] + ".renamed")
    assert content_hash(renamed) == content_hash(manifest)
    relabelled = manifest.assign(**{"class": "healthy"})
    assert content_hash(relabelled) != content_hash(manifest)


def test_slices_of_a_dicom_series_are_numbered_by_position(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two series mixed in one folder are told apart by their UIDs; a missing slice leaves a gap in
    the numbers (and a warning) instead of shifting the slices above it."""
    folder = tmp_path / "Healthy" / "mixed"
    folder.mkdir(parents=True)
    hu = np.full((40, 40), -1000.0)
    hu[10:30, 10:30] = 30.0  # a head in the brain window
    for position in (0.0, 5.0, 10.0, 20.0, 25.0):  # 15.0 is missing
        write_ct_slice(folder / f"a{position:04.0f}.dcm", hu, patient="p1", series="a", position=position)
    for position in (2.5, 0.0):
        write_ct_slice(folder / f"b{position:04.0f}.dcm", hu, patient="p2", series="b", position=position)
    (tmp_path / "Tumor").mkdir()
    with caplog.at_level("WARNING"):
        manifest, _ = build_manifest(tmp_path, CONFIG, progress=False)
    by_patient = manifest.sort_values("path").groupby("patient")
    assert by_patient["slice"].apply(list).to_dict() == {"p1": [0, 1, 2, 4, 5], "p2": [0, 1]}
    assert by_patient["slices"].first().to_dict() == {"p1": 6, "p2": 2}
    assert "1 of its 6 slice positions hold no slice" in caplog.text


def test_recorded_kinds_reach_the_manifest_and_healthy_slices_have_none(raw: Path, tmp_path: Path) -> None:
    add_kinds(raw, {"Tumor/nested/c.png": "subdural"})
    add_kinds(raw, {"Healthy/a.png": "tumor"})  # a healthy slice's kind is never shown
    manifest, _ = build_manifest(raw, CONFIG, progress=False)
    assert dict(zip(manifest["path"], manifest[KIND_COLUMN], strict=True)) == {
        "Healthy/a.png": "",
        "Healthy/b.jpg": "",
        "Tumor/nested/c.png": "subdural",
    }
    assert KINDS_FILE not in manifest["path"].tolist()
    manifest.to_csv(tmp_path / "raw.csv", index=False)
    read = read_manifest(tmp_path / "raw.csv")
    assert read[KIND_COLUMN].tolist() == ["", "", "subdural"]  # text, empty (not NaN) for none
    manifest.drop(columns=KIND_COLUMN).to_csv(tmp_path / "old.csv", index=False)
    assert read_manifest(tmp_path / "old.csv")[KIND_COLUMN].tolist() == ["", "", ""]  # written before kinds


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown kind 'bleed'"):
        add_kinds(tmp_path, {"Tumor/x.png": "bleed"})


def test_a_slices_level_is_its_place_in_its_scan_and_nan_for_a_lone_image() -> None:
    """One definition of the level serves the splits, the audit, evaluate's bands and predict."""
    frame = pd.DataFrame(
        {
            "path": ["a.dcm", "b.dcm", "c.dcm", "one.dcm", "lone.png"],
            "slice": [0, 1, 2, 0, pd.NA],
            "slices": [3, 3, 3, 1, pd.NA],
        }
    )
    np.testing.assert_array_equal(frame_levels(frame), [0.0, 0.5, 1.0, np.nan, np.nan])
    assert np.isnan(frame_levels(frame.drop(columns=["slice", "slices"]))).all()
    np.testing.assert_array_equal(scan_levels(np.arange(5), 5), [0.0, 0.25, 0.5, 0.75, 1.0])
