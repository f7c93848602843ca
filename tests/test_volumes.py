"""CT volumes: NIfTI read in any orientation and mapped back exactly, the dataset layouts with their
masks, each bad volume a reject with its reason, patient-level splits and scan-level results."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.config import Settings
from pipeline.data.classes import mask_path
from pipeline.data.dicom import read_hounsfield
from pipeline.data.manifest import read_manifest
from pipeline.data.series import find_series, write_segmentation
from pipeline.data.slicing import find_cases, slice_scans
from pipeline.data.volumes import open_volume, read_mask
from pipeline.evaluation.scans import scan_metrics, scan_table
from pipeline.stages import download, split
from tests.volume_factory import head_volume, lesion_mask, write_series, write_volume

# Identity, axes permuted and flipped with anisotropic voxels, and an oblique-free LPS-like flip.
AFFINES = [
    np.eye(4),
    np.array([[0, -1, 0, 5], [0, 0, 2.5, 1], [-1.5, 0, 0, 3], [0, 0, 0, 1.0]]),
    np.diag([-0.8, -0.8, 3.0, 1.0]),
]


@pytest.mark.parametrize("slab", [1, 2, None])
@pytest.mark.parametrize("affine", AFFINES)
def test_slices_run_feet_to_head_and_map_back_to_the_files_grid(
    affine: np.ndarray, slab: int | None, tmp_path: Path
) -> None:
    """Read a slab at a time in the file's order, each slab's slices (and mask) placed back on the
    file's grid give the file's voxels exactly."""
    data = np.random.default_rng(0).normal(size=(9, 7, 5)).astype(np.float32)
    mask_file = write_volume(tmp_path / "scan_mask.nii.gz", (data > 1).astype(np.uint8), affine)
    with open_volume(write_volume(tmp_path / "scan.nii.gz", data, affine)) as volume:
        masks = read_mask(mask_file, volume)
        grid, mask_grid = np.full(data.shape, np.nan, np.float32), np.zeros(data.shape, bool)
        for start, stop in volume.slabs(slab):
            slices = volume.read(start, stop)
            assert slices.shape == (stop - start, *volume.slice_shape) and slices.dtype == np.float32
            volume.put_slices(grid, start, slices)
            volume.put_slices(mask_grid, start, masks[start:stop])
    np.testing.assert_array_equal(grid, data)
    np.testing.assert_array_equal(mask_grid, data > 1)
    codes = nib.aff2axcodes(affine)
    superior = next(axis for axis, code in enumerate(codes) if code in "SI")
    assert volume.count == data.shape[superior] == len(masks)


def test_an_axial_slice_is_displayed_anterior_up_and_the_patients_right_on_the_left(tmp_path: Path) -> None:
    data = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)  # RAS+: x to the left, y anterior
    with open_volume(write_volume(tmp_path / "ras.nii", data)) as volume:
        slices = volume.read(0, 2)
    np.testing.assert_array_equal(slices[1], data[::-1, ::-1, 1].T)


def test_the_first_slice_is_the_lowest(tmp_path: Path) -> None:
    """With the head's top at the file's first index (an I-S flipped affine), slice 0 is still the lowest,
    and the slabs come top first: the file's own order."""
    data = np.zeros((4, 4, 6), dtype=np.float32)
    data[..., 0] = 7  # the top of the head: z = 0 maps to the highest world position
    flipped = write_volume(tmp_path / "flipped.nii.gz", data, np.diag([1.0, 1.0, -1.0, 1.0]))
    with open_volume(flipped) as volume:
        assert list(volume.slabs(4)) == [(4, 6), (0, 4)]
        slices = volume.read(0, volume.count)
    assert (slices[-1] == 7).all() and (slices[0] == 0).all()


@pytest.mark.parametrize("affine", [np.eye(4), np.diag([1.0, 1.0, -1.0, 1.0])])
def test_a_gzipped_volume_read_slab_by_slab_is_decompressed_once(
    affine: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slabs in the file's order never seek back: a `.nii.gz` costs one decompression, not one per slab."""
    data = np.random.default_rng(1).integers(-1000, 1000, (64, 64, 40)).astype(np.int16)
    path = write_volume(tmp_path / "scan.nii.gz", data, affine)
    compressed: list[int] = []

    class Counted(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            chunk = super().read(size)
            compressed.append(len(chunk))
            return chunk

    monkeypatch.setattr(gzip, "open", lambda name, mode: gzip.GzipFile(fileobj=Counted(name), mode=mode))
    with open_volume(path) as volume:
        slabs = list(volume.slabs(4))
        for start, stop in slabs:
            volume.read(start, stop)
    assert len(slabs) == 10 and sum(compressed) <= path.stat().st_size


def _dataset(root: Path, patients: int = 6) -> Path:
    """`patients` folders with one scan each; every other patient has a lesion on slices 3-4."""
    for p in range(patients):
        hu = head_volume(seed=p)
        write_volume(root / f"patient{p}" / "head.nii.gz", hu)
        if p % 2 == 0:
            write_volume(root / f"patient{p}" / "head_mask.nii.gz", lesion_mask(hu.shape, range(3, 5)))
        else:
            write_volume(root / "masks" / f"patient{p}" / "head.nii.gz", np.zeros(hu.shape, np.uint8))
    return root


def test_layouts_masks_patients_and_class_folders(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "in", patients=2)
    write_volume(root / "Healthy" / "extra.nii.gz", head_volume())
    cases = {case.name: case for case in find_cases(root)[0]}
    assert set(cases) == {"patient0/head", "patient1/head", "Healthy/extra"}
    assert cases["patient0/head"].mask == root / "patient0" / "head_mask.nii.gz"
    assert cases["patient1/head"].mask == root / "masks" / "patient1" / "head.nii.gz"
    assert (cases["patient0/head"].patient, cases["Healthy/extra"].patient) == ("patient0", "extra")
    assert cases["Healthy/extra"].healthy and cases["Healthy/extra"].mask is None


def test_each_bad_volume_is_a_reject_and_the_rest_are_sliced(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "in", patients=2)
    write_volume(root / "unlabelled.nii.gz", head_volume())
    write_volume(root / "wrong.nii.gz", head_volume())
    write_volume(root / "wrong_mask.nii.gz", np.zeros((10, 10, 8), np.uint8))
    good = (root / "patient0" / "head.nii.gz").read_bytes()
    (root / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    write_volume(root / "cut_mask.nii.gz", np.zeros((48, 48, 8), np.uint8))
    out = tmp_path / "raw"
    rejects = dict(slice_scans(root, out))
    assert set(rejects) == {"unlabelled.nii.gz", "wrong.nii.gz", "cut.nii.gz"}
    assert "cannot be labelled" in rejects["unlabelled.nii.gz"]
    assert "differs from its image's (48, 48, 8)" in rejects["wrong.nii.gz"]
    assert "cannot read NIfTI" in rejects["cut.nii.gz"]
    tumor = sorted(p.relative_to(out).as_posix() for p in (out / "Tumor").rglob("*.dcm"))
    assert tumor == ["Tumor/patient0/head_z003.dcm", "Tumor/patient0/head_z004.dcm"]
    assert all((out / mask_path(path)).is_file() for path in tumor)
    assert len(list((out / "Healthy").rglob("*.dcm"))) == 16 - 2


def test_volumes_are_downloaded_and_split_by_patient(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    root = _dataset(tmp_path / "in", patients=8)
    write_volume(root / "unlabelled.nii.gz", head_volume())
    settings = make_settings("data=local", f"data.path={root}", "preprocess.image_size=32", base=())
    download.run(settings)
    manifest = read_manifest(settings.paths.manifests / "raw.csv")
    assert manifest["patient"].nunique() == 8 and (manifest["slices"] == 8).all()
    assert sorted(manifest.loc[manifest["patient"] == "patient0", "slice"]) == list(range(8))
    rejects = pd.read_csv(settings.paths.manifests / "rejects.csv")
    assert rejects["path"].tolist() == ["unlabelled.nii.gz"]
    assert json.loads((settings.paths.reports / "data" / "download.json").read_text())["scans"] == 8
    split.run(settings)
    summary = json.loads((settings.paths.reports / "data" / "split.json").read_text())
    assert summary["by_patient"] == 1
    assert summary["patients_train"] + summary["patients_val"] + summary["patients_test"] == 8
    assert summary["val_tumor"] > 0 and summary["test_tumor"] > 0 and "train_tumor" not in summary


def test_dicom_series_are_labelled_by_their_dicom_seg_or_their_class_folder(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    root = tmp_path / "in"
    lesion = np.transpose(head_volume(slices=5), (2, 0, 1))
    files = write_series(root / "p1" / "ct", lesion, patient="anon-1", names=[f"{n}.dcm" for n in "qwert"])
    (series,), _, _ = find_series(files)
    mask = np.zeros((5, 48, 48), dtype=bool)
    mask[2:4, 20:26, 20:26] = True
    write_segmentation(series, mask, root / "annotations" / "lesion.dcm", "test")
    write_series(
        root / "Healthy" / "p2" / "ct",
        np.transpose(head_volume(slices=4, seed=1), (2, 0, 1)),
        patient="anon-2",
    )
    write_series(root / "p3" / "ct", np.transpose(head_volume(slices=3), (2, 0, 1)), patient="anon-3")
    sagittal = np.transpose(head_volume(slices=2, seed=2), (2, 0, 1))
    write_series(root / "Healthy" / "p4" / "sag", sagittal, patient="anon-4", orientation=(0, 1, 0, 0, 0, -1))
    cases = {case.name: case for case in find_cases(root)[0]}
    assert cases["p1/ct"].mask == root / "annotations" / "lesion.dcm" and cases["p1/ct"].patient == "anon-1"
    assert cases["Healthy/p2/ct"].healthy and cases["Healthy/p2/ct"].mask is None

    settings = make_settings("data=local", f"data.path={root}", "preprocess.image_size=32", base=())
    download.run(settings)
    rejects = pd.read_csv(settings.paths.manifests / "rejects.csv")
    reasons = dict(zip(rejects["path"], rejects["reason"], strict=True))
    assert "cannot be labelled" in reasons.pop("p3/ct")
    assert set(reasons) == {f"Healthy/Healthy/p4/sag/IM000{k}.dcm" for k in range(2)}
    assert all("a sagittal slice: the detector reads axial" in reason for reason in reasons.values())
    manifest = read_manifest(settings.paths.manifests / "raw.csv").set_index("path")
    tumor = sorted(manifest.index[manifest["class"] == "tumor"])
    assert tumor == ["Tumor/p1/ct/e.dcm", "Tumor/p1/ct/r.dcm"]  # slices 2 and 3 by position
    assert manifest.loc["Tumor/p1/ct/e.dcm", "patient"] == "anon-1"
    assert manifest.loc["Tumor/p1/ct/e.dcm", "slice"] == 2
    assert (manifest["class"] == "healthy").sum() == 3 + 4
    raw = settings.paths.raw
    pixels = np.asarray(Image.open(raw / mask_path("Tumor/p1/ct/e.dcm"))) > 0
    np.testing.assert_array_equal(pixels, mask[2])


def test_the_built_in_scans_as_dicom_series_with_dicom_seg_equal_their_nifti_form(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The same phantoms written as NIfTI + masks and as DICOM series + DICOM-SEG come out of download
    as the same slices (pixels in HU, displayed alike), labels, lesion kinds, masks and patients."""
    manifests = {}
    for file_format in ("nifti", "dicom"):
        settings = make_settings(
            "data=synthetic_volumes",
            "data.patients=6",
            "data.slices=6",
            "data.size=32",
            f"data.format={file_format}",
            "preprocess.image_size=32",
            f"paths.raw={tmp_path / file_format / 'raw'}",
            f"paths.manifests={tmp_path / file_format / 'manifests'}",
            base=(),
        )
        download.run(settings)
        manifest = read_manifest(settings.paths.manifests / "raw.csv")
        manifests[file_format] = (
            manifest.set_index(["patient", "slice"]).sort_index().assign(raw=settings.paths.raw)
        )
    nifti, dicom = manifests["nifti"], manifests["dicom"]
    assert len(nifti) == 36 and nifti.index.get_level_values("patient").nunique() == 6
    assert nifti.index.equals(dicom.index) and nifti["class"].tolist() == dicom["class"].tolist()
    assert nifti["kind"].tolist() == dicom["kind"].tolist()  # each lesioned slice's kind, either way
    assert ((nifti["kind"] != "") == (nifti["class"] == "tumor")).all()
    assert (dicom["class"] == "tumor").any() and dicom["path"].str.match(
        r"(Healthy|Tumor)/patient\d{3}/ct/"
    ).all()
    for (_, a), (_, b) in zip(nifti.iterrows(), dicom.iterrows(), strict=True):
        np.testing.assert_array_equal(
            read_hounsfield(a.raw / a.path, a.path)[0], read_hounsfield(b.raw / b.path, b.path)[0]
        )
        if a["class"] == "tumor":
            masks = [np.asarray(Image.open(row.raw / mask_path(row.path))) for row in (a, b)]
            np.testing.assert_array_equal(*masks)


def test_a_scan_is_as_anomalous_as_its_top_slices() -> None:
    frame = pd.DataFrame(
        {
            "path": [f"s{s}_z{k}" for s in range(4) for k in range(5)],
            "series": [f"s{s}" for s in range(4) for _ in range(5)],
            "patient": [f"p{s}" for s in range(4) for _ in range(5)],
        }
    )
    labels = np.array([int(s >= 2 and k == 2) for s in range(4) for k in range(5)])
    scores = np.array(
        [
            0.1 * k + (0.5 if label else 0) + 0.01 * s
            for s in range(4)
            for k, label in enumerate(labels[s * 5 : s * 5 + 5])
        ]
    )
    table = scan_table(frame, labels, scores, top_k=2)
    assert table["label"].tolist() == [0, 0, 1, 1] and table["anomalous_slices"].tolist() == [0, 0, 1, 1]
    assert table.loc[2, "top_slice"] == "s2_z2" and table.loc[0, "top_slice"] == "s0_z4"
    assert table.loc[2, "max_score"] == pytest.approx(0.72)
    assert table.loc[2, "top_k_score"] == pytest.approx((0.72 + 0.42) / 2)
    metrics = scan_metrics(table)
    assert metrics["scans"] == 4 and metrics["anomalous_scans"] == 2 and metrics["scan_roc_auc"] == 1.0
    assert scan_table(frame.drop(columns="series"), labels, scores, 2).empty
