"""Getting data in: the dataset layouts a user may point at, zips, and the errors for bad input."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import KaggleData, LocalData
from pipeline.data.sources import CT_FOLDER, SOURCES, fetch, find_dataset_root
from pipeline.errors import ConfigError, DataError
from tests.volume_factory import head_volume, write_series, write_volume


def _dataset(root: Path, n: int = 2, folders: tuple[str, str] = ("Healthy", "Tumor")) -> Path:
    for cls in folders:
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8), 40 * i).save(root / cls / f"ct_{cls.lower()} ({i + 1}).png")
    return root


def _zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in folder.rglob("*"):
            zipped.write(path, path.relative_to(folder.parent))
    return archive


def test_class_folders_directly(tmp_path: Path) -> None:
    assert find_dataset_root(_dataset(tmp_path / "data")) == tmp_path / "data"


def test_ct_folder_of_the_public_dataset_beside_its_mri_folder(tmp_path: Path) -> None:
    _dataset(tmp_path / "Dataset" / "Brain Tumor MRI images")
    ct = _dataset(tmp_path / "Dataset" / CT_FOLDER)
    assert find_dataset_root(tmp_path) == ct


def test_no_class_folders_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "Healthy").mkdir()
    with pytest.raises(DataError, match="no Healthy/ and Tumor/"):
        find_dataset_root(tmp_path)


def test_two_candidate_datasets_are_ambiguous(tmp_path: Path) -> None:
    _dataset(tmp_path / "a")
    _dataset(tmp_path / "b")
    with pytest.raises(DataError, match="several folders"):
        find_dataset_root(tmp_path)


def test_local_folder_is_copied_with_its_layout(tmp_path: Path) -> None:
    source = _dataset(tmp_path / "in" / CT_FOLDER)
    fetch(LocalData(source="local", path=tmp_path / "in"), tmp_path / "raw", 0)
    copied = sorted(p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*.png"))
    assert copied == sorted(p.relative_to(source).as_posix() for p in source.rglob("*.png"))


def test_zip_of_the_dataset(tmp_path: Path) -> None:
    archive = _zip(_dataset(tmp_path / CT_FOLDER), tmp_path / "dataset.zip")
    (tmp_path / "raw").mkdir()
    fetch(LocalData(source="local", path=archive), tmp_path / "raw", 0)
    assert len(list((tmp_path / "raw" / "Tumor").glob("*.png"))) == 2


def test_zip_entry_escaping_the_target_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("Healthy/a.png", b"x")
        zipped.writestr("../../escaped.txt", b"pwned")
    (tmp_path / "work" / "raw").mkdir(parents=True)
    with pytest.raises(DataError, match=r"entry '\.\./\.\./escaped\.txt'.*outside"):
        fetch(LocalData(source="local", path=archive), tmp_path / "work" / "raw", 0)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not list((tmp_path / "work").rglob("a.png"))


def test_broken_zip_is_named(tmp_path: Path) -> None:
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="broken.zip"):
        fetch(LocalData(source="local", path=archive), tmp_path / "raw", 0)


def test_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    for path in (root / "Tumor").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="Tumor class folder is empty"):
        fetch(LocalData(source="local", path=root), tmp_path / "raw", 0)


def test_kaggle_without_credentials_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="KAGGLE_USERNAME and KAGGLE_KEY"):
        fetch(
            KaggleData(source="kaggle", handle="murtozalikhon/brain-tumor-multimodal-image-ct-and-mri"),
            tmp_path / "raw",
            0,
        )


def test_unknown_source_lists_the_registered_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=r"data\.source: unknown data source 'ftp' "
        r"\(available: kaggle, local, synthetic, synthetic_volumes\)",
    ):
        SOURCES.get("ftp")


def test_class_folders_may_have_other_names(tmp_path: Path) -> None:
    """`data.folders`: a dataset with normal/ and anomalous/ lands in the raw folder's Healthy/ and Tumor/."""
    root = _dataset(tmp_path / "in", folders=("normal", "anomalous"))
    config = LocalData(source="local", path=root, folders={"healthy": "normal", "tumor": "anomalous"})
    fetch(config, tmp_path / "raw", 0)
    assert sorted(p.parent.name for p in (tmp_path / "raw").rglob("*.png")) == ["Healthy"] * 2 + ["Tumor"] * 2
    with pytest.raises(DataError, match=r"no Healthy/ and Tumor/ folders found .*data\.folders\.healthy"):
        fetch(LocalData(source="local", path=root), tmp_path / "raw2", 0)


def test_a_labels_csv_instead_of_class_folders(tmp_path: Path) -> None:
    """`data.labels`: each listed file goes to its class (by name or by the class folder names); an
    unlisted file is a reject; a bad row stops the download with its line."""
    root = tmp_path / "flat"
    (root / "scans").mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.new("L", (8, 8), 50).save(root / "scans" / f"{name}.png")
    labels = root / "labels.csv"
    labels.write_text("path,class\nscans/a.png,healthy\nscans/b.png,anomalous\n")
    config = LocalData(
        source="local", path=root, labels=labels, folders={"healthy": "normal", "tumor": "anomalous"}
    )
    rejects = fetch(config, tmp_path / "raw", 0)
    assert (tmp_path / "raw/Healthy/scans/a.png").is_file() and (tmp_path / "raw/Tumor/scans/b.png").is_file()
    assert rejects == [("scans/c.png", "not in the labels CSV labels.csv")]
    labels.write_text("path,class\nscans/a.png,healthy\nscans/b.png,sick\n")
    with pytest.raises(
        DataError, match=r"labels.csv: 1 row\(s\) whose class is not one of .*line 3: scans/b.png"
    ):
        fetch(config, tmp_path / "raw2", 0)
    labels.write_text("path,class\nscans/zz.png,healthy\n")
    with pytest.raises(DataError, match=r"path does not exist, e.g. line 2: scans/zz.png"):
        fetch(config, tmp_path / "raw3", 0)


def test_lesion_masks_beside_the_class_folders_come_along(tmp_path: Path) -> None:
    """A 2D dataset's `masks/` (any letter case) is the pixel truth: copied to the raw folder's Masks/."""
    root = _dataset(tmp_path / "in")
    (root / "masks").mkdir()
    Image.new("L", (8, 8), 255).save(root / "masks" / "ct_tumor (1).png")
    fetch(LocalData(source="local", path=root), tmp_path / "raw", 0)
    assert (tmp_path / "raw" / "Masks" / "ct_tumor (1).png").is_file()


def test_a_labels_csv_labels_volumes_their_slices_and_whole_folders(tmp_path: Path) -> None:
    """Rows may name a NIfTI volume (every slice), one slice of it (`slice`; unlisted slices are not
    used), or a folder (a patient's, a series': every file below it, unless listed itself)."""
    root = tmp_path / "scans"
    write_volume(root / "vol" / "healthy.nii.gz", head_volume(slices=4))
    write_volume(root / "vol" / "mixed.nii.gz", head_volume(slices=4))
    write_series(root / "p7" / "ct", np.transpose(head_volume(slices=3), (2, 0, 1)), patient="p7")
    write_series(root / "p7" / "ct2", np.transpose(head_volume(slices=2), (2, 0, 1)), patient="p7")
    labels = root / "labels.csv"
    labels.write_text(
        "path,slice,class\nvol/healthy.nii.gz,,healthy\nvol/mixed.nii.gz,1,healthy\nvol/mixed.nii.gz,2,tumor\n"
        "p7,,tumor\np7/ct2/IM0001.dcm,,healthy\n"
    )
    rejects = fetch(LocalData(source="local", path=root, labels=labels), tmp_path / "raw", 0)
    assert rejects == []
    found = sorted(p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*.dcm"))
    assert found == [
        "Healthy/p7/ct2/IM0001.dcm",
        *(f"Healthy/vol/healthy_z{k:03d}.dcm" for k in range(4)),
        "Healthy/vol/mixed_z001.dcm",
        *(f"Tumor/p7/ct/IM{k:04d}.dcm" for k in range(3)),
        "Tumor/p7/ct2/IM0000.dcm",
        "Tumor/vol/mixed_z002.dcm",
    ]
    labels.write_text("path,slice,class\nvol/mixed.nii.gz,x,tumor\np7/ct/IM0000.dcm,0,tumor\n")
    with pytest.raises(DataError, match=r"slice is not a whole number >= 0, e.g. line 2: vol/mixed.nii.gz"):
        fetch(LocalData(source="local", path=root, labels=labels), tmp_path / "raw2", 0)
    labels.write_text("path,slice,class\np7/ct/IM0000.dcm,0,tumor\n")
    with pytest.raises(DataError, match=r"slice is given for a file that is not a volume, e.g. line 2"):
        fetch(LocalData(source="local", path=root, labels=labels), tmp_path / "raw3", 0)
