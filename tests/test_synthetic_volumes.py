"""The built-in phantom scans: determinism, lesion kinds recorded, masks that match the painted lesions,
plausible Hounsfield units, a skull base that differs from level to level."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.data import synthetic
from pipeline.data.classes import (
    EPIDURAL,
    INTRAPARENCHYMAL,
    INTRAVENTRICULAR,
    KINDS,
    SUBARACHNOID,
    SUBDURAL,
    TUMOR,
)
from pipeline.data.synthetic import generate_volumes

SMALL = {"patients": 12, "slices": 12, "size": 64, "lesion_share": 0.9, "seed": 3, "progress": False}
BLEEDS = (EPIDURAL, SUBDURAL, SUBARACHNOID, INTRAVENTRICULAR, INTRAPARENCHYMAL)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("phantoms")
    return out, generate_volumes(out, **SMALL)


def _volume(path: Path) -> np.ndarray:
    """A NIfTI file as displayed slices (feet to head), as the generator drew them."""
    data = np.asarray(nib.load(path).dataobj)
    return np.stack([data[:, :, k][::-1, ::-1].T for k in range(data.shape[2])])


def test_same_arguments_give_the_same_scans_and_kinds(scans: tuple[Path, dict], tmp_path: Path) -> None:
    out, kinds = scans
    again = generate_volumes(tmp_path / "again", **SMALL)
    assert again == kinds
    for name in ("patient000", "patient005"):
        for file in ("head.nii.gz", "head_mask.nii.gz"):
            np.testing.assert_array_equal(
                _volume(out / name / file), _volume(tmp_path / "again" / name / file)
            )
    other = generate_volumes(tmp_path / "other", **{**SMALL, "seed": 4, "patients": 1})
    assert not np.array_equal(
        _volume(out / "patient000" / "head.nii.gz"),
        _volume(tmp_path / "other" / "patient000" / "head.nii.gz"),
    )
    assert other.keys() <= {synthetic.PurePosixPath("patient000/head.nii.gz")}


def test_every_lesioned_slice_and_only_those_has_a_kind(scans: tuple[Path, dict]) -> None:
    out, kinds = scans
    found = set()
    for index in range(SMALL["patients"]):
        scan = synthetic.PurePosixPath(f"patient{index:03d}/head.nii.gz")
        masks = _volume(out / f"patient{index:03d}" / "head_mask.nii.gz") > 0
        lesioned = {k for k in range(len(masks)) if masks[k].any()}
        assert set(kinds.get(scan, {})) == lesioned
        found |= set(kinds.get(scan, {}).values())
    assert found == set(KINDS)  # the first lesion's kind goes round the kinds by patient


def test_bleeds_reach_the_upper_third_and_spare_the_skull_base() -> None:
    levels = {kind: [] for kind in KINDS}
    for index in range(60):
        rng = np.random.default_rng((0, 3, index))
        synthetic._draw_patient(rng, 64)
        for lesion in synthetic._plan_lesions(rng, index, 20, 0.9, 64):
            levels[lesion.kind] += [k / 19 for k in lesion.slices]
    assert all(levels[kind] for kind in KINDS)
    assert min(min(found) for found in levels.values()) >= 0.2
    assert max(max(levels[kind]) for kind in (EPIDURAL, SUBDURAL, SUBARACHNOID)) >= 0.7
    assert all(0.36 < level < 0.64 for level in levels[INTRAVENTRICULAR])  # where the ventricles are


def _render(index: int, k: int, with_lesions: bool, size: int = 64, slices: int = 12):
    rng = np.random.default_rng((3, 3, index))
    patient = synthetic._draw_patient(rng, size)
    lesions = synthetic._plan_lesions(rng, index, slices, 1.0, size)
    here = [(lesion, lesion.taper(k)) for lesion in lesions if k in lesion.slices] if with_lesions else []
    hu, mask = synthetic._render_level(
        patient, k / (slices - 1), np.random.default_rng((3, 3, index, 1 + k)), here
    )
    return hu, mask, [lesion.kind for lesion, _ in here]


@pytest.mark.parametrize("index", range(6))  # one patient of each kind
def test_masks_cover_the_painted_lesion_and_it_has_blood_or_tumor_density(index: int) -> None:
    """Rendering a level without its lesions gives the same slice (noise included) but for the lesion:
    a bleed changes little outside its mask (the kernel's blur, a pixel or two; subarachnoid blood's
    faintest partial volume); a haematoma
    or tumor also darkens an oedema rim, left out of the mask as a radiologist would."""
    rng = np.random.default_rng((3, 3, index))
    synthetic._draw_patient(rng, 64)
    lesion = synthetic._plan_lesions(rng, index, 12, 1.0, 64)[0]
    k = lesion.slices[len(lesion.slices) // 2]
    hu, mask, kinds = _render(index, k, True)
    clean, none, _ = _render(index, k, False)
    assert none is None and kinds[0] == lesion.kind and mask is not None and mask.any()
    changed = np.abs(hu - clean) > 3
    assert changed[mask].mean() > 0.5  # the mask marks what the lesion changed
    if lesion.kind in BLEEDS[:4]:
        outside = changed & ~ndimage.binary_dilation(mask, iterations=2)
        assert outside.sum() <= 0.1 * changed.sum() + 2 and (np.abs(hu - clean)[outside] < 10).all()
    if lesion.kind == TUMOR:
        assert np.abs(hu - clean)[mask].mean() > 5
    else:  # acute blood: brighter than what it replaced, within the brain window's top
        assert np.median((hu - clean)[mask]) > 0
    if lesion.kind == INTRAVENTRICULAR:
        assert 45 < np.median(hu[mask]) < 90
    if lesion.kind == INTRAPARENCHYMAL:  # a small contusion's blood is partial-volumed with brain
        assert 35 < np.median(hu[mask]) < 90


def test_hounsfield_units_are_plausible(scans: tuple[Path, dict]) -> None:
    out, _ = scans
    hu = _volume(out / "patient001" / "head.nii.gz")
    assert hu.dtype == np.float32 and np.isfinite(hu).all()
    assert np.allclose(hu[:, :2, :2], -1000, atol=1)  # air round the head
    assert hu.max() > 1000 and hu.min() >= -1100  # dense bone; nothing below air
    middle = hu[len(hu) // 2, 24:40, 24:40]  # the middle of a mid-level slice: parenchyma and CSF
    assert 10 < np.median(middle) < 45


def test_the_skull_base_changes_from_level_to_level_and_holds_air_and_bone() -> None:
    """Sinuses, mastoid cells and petrous bone at the skull base, none of them higher up; no two levels
    are the same slice rescaled."""
    slices = [_render(7, k, False, slices=12)[0] for k in range(12)]
    inside = [ndimage.binary_erosion(ndimage.binary_fill_holes(s > -500), iterations=4) for s in slices]
    air = [int((s < -500)[i].sum()) for s, i in zip(slices, inside, strict=True)]
    assert air[0] > 0 and air[1] > 0 and air[2] > 0
    assert air[6] == 0 and air[9] == 0
    dense = [
        int((s > 600)[ndimage.binary_erosion(i, iterations=6)].sum())
        for s, i in zip(slices, inside, strict=True)
    ]
    assert dense[1] > dense[7]
    assert not np.allclose(slices[1], slices[2], atol=50)
