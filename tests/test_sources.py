"""Getting data in: the dataset layouts a user may point at, zips, and the errors for bad input."""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.core.config import ArchiveLimits
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.io import remove_tree
from pipeline.data.classes import read_kinds
from pipeline.data.guards import list_files
from pipeline.data.slicing import find_cases, has_scans
from pipeline.data.sources import (
    CT_FOLDER,
    SOURCES,
    KaggleData,
    LocalData,
    fetch,
    find_dataset_root,
    is_zip,
    safe_extract,
)
from pipeline.inputs.collect import collect
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


def test_zip_entries_named_outside_it_or_too_long_are_rejects_and_the_others_extracted(
    tmp_path: Path,
) -> None:
    archive = _zip(_dataset(tmp_path / "in"), tmp_path / "evil.zip")
    long_name = "in/Healthy/" + "x" * 300 + ".png"
    with zipfile.ZipFile(archive, "a") as zipped:
        for name in ("../../escaped.txt", "in/../../escaped.txt", "/tmp/absolute.txt", long_name):
            zipped.writestr(name, b"pwned")
    (tmp_path / "work" / "raw").mkdir(parents=True)
    rejects = fetch(LocalData(source="local", path=archive), tmp_path / "work" / "raw", 0)
    assert sorted(rejects) == [
        ("../../escaped.txt", "entry name points outside the archive: not extracted"),
        ("/tmp/absolute.txt", "an absolute entry name: not extracted"),
        ("in/../../escaped.txt", "entry name points outside the archive: not extracted"),
        (long_name, "entry name too long for the file system (a name above 255 bytes): not extracted"),
    ]
    assert len(list((tmp_path / "work" / "raw").rglob("*.png"))) == 4
    assert not list(tmp_path.rglob("escaped.txt")) and not Path("/tmp/absolute.txt").exists()


def test_a_truncated_zip_is_called_so(tmp_path: Path) -> None:
    """`is_zip` reads the file's head itself: a zip cut short is a corrupt zip, not 'neither a folder
    nor a zip archive'."""
    whole = _zip(_dataset(tmp_path / "in"), tmp_path / "whole.zip").read_bytes()
    archive = tmp_path / "broken.zip"
    archive.write_bytes(whole[: len(whole) // 2])
    assert is_zip(archive)
    with pytest.raises(DataError, match=r"broken\.zip: truncated or corrupt zip"):
        fetch(LocalData(source="local", path=archive), tmp_path / "raw", 0)


def test_messages_about_a_zips_content_name_the_zip_not_the_folder_it_is_extracted_to(tmp_path: Path) -> None:
    (tmp_path / "in" / "Healthy").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "in" / "Healthy" / "a.png")
    archive = _zip(tmp_path / "in", tmp_path / "data.zip")
    (tmp_path / "work" / "raw").mkdir(parents=True)
    with pytest.raises(DataError, match=rf"^{re.escape(str(archive))}: no Healthy/ and Tumor/ folders"):
        fetch(LocalData(source="local", path=archive), tmp_path / "work" / "raw", 0)
    (tmp_path / "in" / "Tumor").mkdir()
    archive.unlink()
    _zip(tmp_path / "in", archive)
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(archive))}/in/Tumor: the Tumor class folder is empty"
    ):
        fetch(LocalData(source="local", path=archive), tmp_path / "work" / "raw2", 0)


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
    unlisted file is a reject, and so is each bad row, naming its line, while the good rows are used."""
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
    labels.write_text("path,class\nscans/a.png,healthy\nscans/b.png,sick\n\nscans/zz.png,tumor\n")
    rejects = fetch(config, tmp_path / "raw2", 0)
    assert rejects == [
        ("scans/b.png", "labels.csv line 3: class 'sick' is not one of anomalous, healthy, normal, tumor"),
        ("scans/zz.png", "labels.csv line 5: scans/zz.png does not exist"),
        ("scans/b.png", "not in the labels CSV labels.csv"),
        ("scans/c.png", "not in the labels CSV labels.csv"),
    ]
    assert [p.name for p in (tmp_path / "raw2").rglob("*.png")] == ["a.png"]


def test_a_labels_csv_without_its_columns_is_one_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "in")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\nHealthy/a.png,healthy\n")
    with pytest.raises(
        DataError, match=r"labels.csv: needs the columns 'path' and 'class' \(has file, label\)"
    ):
        fetch(LocalData(source="local", path=root, labels=labels), tmp_path / "raw", 0)


def test_labels_csv_rows_outside_the_data_folder_are_rejects_and_nothing_outside_is_copied(
    tmp_path: Path,
) -> None:
    """`..`, an absolute path, or a symbolic link inside the folder that leads out of it: each row is a
    reject naming its line, never a copy, never a traceback; the labels CSV itself may lie anywhere."""
    root = tmp_path / "data"
    (root / "scans").mkdir(parents=True)
    Image.new("L", (8, 8), 50).save(root / "scans" / "a.png")
    Image.new("L", (8, 8), 50).save(tmp_path / "secret.png")
    (tmp_path / "secret.txt").write_text("password")
    (root / "scans" / "link.png").symlink_to(tmp_path / "secret.png")
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,class\nscans,healthy\n../secret.txt,healthy\n../../../../../../../../etc/passwd,tumor\n"
        f"{tmp_path / 'secret.png'},tumor\nscans/link.png,tumor\nscans/../../secret.png,tumor\n"
    )
    out = tmp_path / "work" / "raw"
    out.mkdir(parents=True)
    rejects = fetch(LocalData(source="local", path=root, labels=labels), out, 0)
    assert rejects == [
        ("../secret.txt", "labels.csv line 3: ../secret.txt is outside data.path"),
        (
            "../../../../../../../../etc/passwd",
            "labels.csv line 4: ../../../../../../../../etc/passwd is outside data.path",
        ),
        (
            str(tmp_path / "secret.png"),
            f"labels.csv line 5: {tmp_path / 'secret.png'} is an absolute path "
            "(give it relative to data.path)",
        ),
        ("scans/link.png", "labels.csv line 6: scans/link.png is outside data.path"),
        ("scans/../../secret.png", "labels.csv line 7: scans/../../secret.png is outside data.path"),
        ("scans/link.png", f"a symbolic link to outside {root}: not followed"),
    ]
    assert [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] == ["Healthy/scans/a.png"]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["raw"]


def test_a_file_labelled_as_two_classes_is_a_reject_naming_both_lines(tmp_path: Path) -> None:
    """However its path is written (`./`, `//`); the same class twice, or a file's own row against its
    folder's, is no contradiction; nor is a slice's row against its volume's."""
    root = tmp_path / "data"
    (root / "scans").mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.new("L", (8, 8), 50).save(root / "scans" / f"{name}.png")
    write_volume(root / "vol.nii.gz", head_volume(slices=3))
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,slice,class\n"
        "scans/a.png,,healthy\n./scans/a.png,,healthy\nscans,,tumor\nscans//a.png,,tumor\n"
        "scans/b.png,,healthy\nscans/./b.png,,healthy\n"
        "vol.nii.gz,,healthy\nvol.nii.gz,1,tumor\nvol.nii.gz,2,tumor\nvol.nii.gz,2,healthy\n"
    )
    out = tmp_path / "raw"
    rejects = fetch(LocalData(source="local", path=root, labels=labels), out, 0)
    assert rejects == [
        ("scans/a.png", "labels.csv: labelled healthy on lines 2, 3 and tumor on line 5"),
        ("vol.nii.gz", "labels.csv: slice 2 labelled tumor on line 10 and healthy on line 11"),
    ]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "Healthy/scans/b.png",
        "Healthy/vol_z000.dcm",
        "Tumor/scans/c.png",
        "Tumor/vol_z001.dcm",
    ]


def test_labelled_folders_deeper_override_shallower(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for folder in ("p1", "p1/ct"):
        (root / folder).mkdir(parents=True)
        Image.new("L", (8, 8), 50).save(root / folder / "a.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,class\np1/ct,healthy\np1,tumor\n")
    out = tmp_path / "raw"
    assert fetch(LocalData(source="local", path=root, labels=labels), out, 0) == []
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "Healthy/p1/ct/a.png",
        "Tumor/p1/a.png",
    ]


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
    labels.write_text(
        "path,slice,class\nvol/mixed.nii.gz,x,tumor\np7/ct/IM0000.dcm,0,tumor\np7,3,tumor\n"
        "vol/healthy.nii.gz,0,healthy\n"
    )
    rejects = fetch(LocalData(source="local", path=root, labels=labels), tmp_path / "raw2", 0)
    assert rejects[:3] == [
        ("vol/mixed.nii.gz", "labels.csv line 2: slice 'x' is not a whole number >= 0"),
        (
            "p7/ct/IM0000.dcm",
            "labels.csv line 3: a slice is given for p7/ct/IM0000.dcm, which is not a volume",
        ),
        ("p7", "labels.csv line 4: a slice is given for p7, which is not a volume"),
    ]
    assert [p.name for p in (tmp_path / "raw2").rglob("*.dcm")] == ["healthy_z000.dcm"]


def test_a_symbolic_link_is_followed_only_to_a_file_inside_the_data_folder(tmp_path: Path) -> None:
    """A link to outside the folder is a reject and its target is never read; a link inside it, a
    dangling link, a loop of links and a pipe are listed without blocking or crashing."""
    root = _dataset(tmp_path / "data")
    (tmp_path / "secret.txt").write_text("password")
    (root / "Healthy" / "out.png").symlink_to(tmp_path / "secret.txt")
    (root / "Masks").mkdir()
    (root / "Masks" / "out.png").symlink_to(tmp_path / "secret.txt")
    (root / "Healthy" / "in.png").symlink_to(root / "Tumor" / "ct_tumor (1).png")
    (root / "Healthy" / "gone.png").symlink_to(root / "nowhere.png")
    (root / "Healthy" / "loop.png").symlink_to(root / "Healthy" / "loop.png")
    os.mkfifo(root / "Healthy" / "pipe.png")
    out = tmp_path / "work" / "raw"
    out.mkdir(parents=True)
    rejects = fetch(LocalData(source="local", path=root), out, 0)
    assert sorted(rejects) == [
        ("Healthy/gone.png", f"a dangling symbolic link (to {root / 'nowhere.png'})"),
        ("Healthy/loop.png", f"a dangling symbolic link (to {root / 'Healthy' / 'loop.png'})"),
        ("Healthy/out.png", f"a symbolic link to outside {root}: not followed"),
        ("Healthy/pipe.png", "not a regular file (a pipe, socket or device)"),
        ("Masks/out.png", f"a symbolic link to outside {root}: not followed"),
    ]
    assert (out / "Healthy" / "in.png").read_bytes() == (root / "Tumor" / "ct_tumor (1).png").read_bytes()
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file() and p.read_bytes() == b"password"]


def test_a_folder_nested_deeper_than_the_recursion_limit_is_walked_and_copied(tmp_path: Path) -> None:
    root, out, unzipped = tmp_path / "d", tmp_path / "raw", tmp_path / "raw2"
    try:
        _dataset(root)
        deep = root / "Healthy"
        for _ in range(1200):
            deep /= "a"
            deep.mkdir()
        Image.new("L", (8, 8), 90).save(deep / "deep.png")
        assert find_dataset_root(root) == root and not has_scans(root) and find_cases(root)[0] == []
        assert list_files(root)[0][0] == deep / "deep.png"
        assert fetch(LocalData(source="local", path=root), out, 0) == []
        assert (out / deep.relative_to(root) / "deep.png").is_file()
        archive = tmp_path / "deep.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for path in list_files(root)[0]:
                zipped.write(path, path.relative_to(tmp_path).as_posix())
        assert fetch(LocalData(source="local", path=archive), unzipped, 0) == []
        assert (unzipped / deep.relative_to(root) / "deep.png").is_file()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "deep.zip", "raw", "raw2"]
    finally:
        for folder in (root, out, unzipped):
            if folder.exists():
                remove_tree(folder)  # shutil.rmtree, pytest's clean-up of old tmp_path, would recurse


def test_predict_gets_a_row_for_each_zip_entry_it_could_not_extract(tmp_path: Path) -> None:
    archive = tmp_path / "in.zip"
    long_name = "y" * 300 + ".png"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("a.png", b"x")
        zipped.writestr("../x.png", b"x")
        zipped.writestr(long_name, b"x")
    inputs = collect(archive, tmp_path / "extracted", ArchiveLimits())
    assert [(item.path, item.error) for item in inputs] == [
        (f"{archive.as_posix()}/a.png", ""),
        (f"{archive.as_posix()}/../x.png", "entry name points outside the archive: not extracted"),
        (
            f"{archive.as_posix()}/{long_name}",
            "entry name too long for the file system (a name above 255 bytes): not extracted",
        ),
    ]
    assert not (tmp_path / "x.png").exists()


def test_a_corrupt_entry_is_a_reject_and_leaves_nothing_behind(tmp_path: Path) -> None:
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        zipped.writestr("good.txt", b"fine")
        zipped.writestr("bad.txt", b"original content")
    data = archive.read_bytes()
    archive.write_bytes(data.replace(b"original content", b"tampered content"))
    rejects = safe_extract(archive, tmp_path / "out", ArchiveLimits())
    assert rejects == [("bad.txt", "cannot be extracted (Bad CRC-32 for file 'bad.txt')")]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.txt"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(st.text(alphabet="ab/.", min_size=1, max_size=10), min_size=1, max_size=6, unique=True))
def test_every_zip_entry_is_extracted_inside_the_target_or_a_reject(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive, target = Path(tmp) / "in.zip", Path(tmp) / "box" / "out"
        target.parent.mkdir()
        with zipfile.ZipFile(archive, "w") as zipped:
            for name in names:
                zipped.writestr(name, b"" if name.endswith("/") else name.encode())
        rejects = dict(safe_extract(archive, target, ArchiveLimits()))
        assert [p.name for p in target.parent.iterdir()] in ([], ["out"])
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["box", "in.zip"]
        for name in names:
            written = target / posixpath.normpath(name)
            assert name in rejects or written.is_dir() or written.is_file(), name


def test_a_labels_csv_kind_column_reaches_the_manifest(tmp_path: Path) -> None:
    """`kind` (optional, any letter case) names an anomalous row's lesion kind: for an image, a volume
    (every slice, or one), a folder (every file below it); an unknown kind, or one on a healthy row, is
    a reject; the same file with two kinds is a contradiction."""
    root = tmp_path / "scans"
    (root / "img").mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.new("L", (8, 8), 50).save(root / "img" / f"{name}.png")
    write_volume(root / "vol.nii.gz", head_volume(slices=4))
    write_series(root / "p7" / "ct", np.transpose(head_volume(slices=2), (2, 0, 1)), patient="p7")
    labels = root / "labels.csv"
    labels.write_text(
        "path,slice,class,kind\nimg/a.png,,tumor,Subdural \nimg/b.png,,tumor,\nimg/c.png,,healthy,\n"
        "vol.nii.gz,1,tumor,epidural\nvol.nii.gz,2,tumor,\nvol.nii.gz,3,healthy,\np7,,tumor,intraventricular\n"
    )
    out = tmp_path / "raw"
    assert fetch(LocalData(source="local", path=root, labels=labels), out, 0) == []
    assert read_kinds(out) == {
        "Tumor/img/a.png": "subdural",
        "Tumor/vol_z001.dcm": "epidural",
        "Tumor/p7/ct/IM0000.dcm": "intraventricular",
        "Tumor/p7/ct/IM0001.dcm": "intraventricular",
    }
    labels.write_text(
        "path,slice,class,kind\nimg/a.png,,tumor,bleed\nimg/b.png,,healthy,tumor\n"
        "img/c.png,,tumor,subdural\nimg/c.png,,tumor,epidural\n"
    )
    rejects = fetch(LocalData(source="local", path=root, labels=labels), tmp_path / "raw2", 0)
    assert rejects[:3] == [
        (
            "img/a.png",
            "labels.csv line 2: kind 'bleed' is not one of epidural, subdural, subarachnoid, "
            "intraventricular, intraparenchymal, tumor",
        ),
        ("img/b.png", "labels.csv line 3: a kind (tumor) is given for a healthy row"),
        ("img/c.png", "labels.csv: labelled tumor (subdural) on line 4 and tumor (epidural) on line 5"),
    ]
    assert read_kinds(tmp_path / "raw2") == {}
