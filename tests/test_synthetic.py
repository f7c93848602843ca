"""The built-in synthetic dataset: layout, determinism, masks that match the tumors, no class cue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.data import synthetic
from pipeline.data.synthetic import generate

SMALL = {"min_size": 64, "max_size": 96, "progress": False}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "L", path
        return np.asarray(image)


def _names(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, 24, 24, seed=7, **SMALL)
    return out


def test_layout_names_and_masks(tmp_path: Path) -> None:
    generate(tmp_path, 3, 4, seed=0, **SMALL)
    assert _names(tmp_path) == {"Healthy", "Tumor", "Masks"}
    assert _names(tmp_path / "Healthy") == {f"ct_healthy ({i}).png" for i in range(1, 4)}
    assert _names(tmp_path / "Tumor") == {f"ct_tumor ({i}).png" for i in range(1, 5)}
    assert _names(tmp_path / "Masks") == _names(tmp_path / "Tumor")  # masks for tumors only
    for name in _names(tmp_path / "Tumor"):
        image, mask = _load(tmp_path / "Tumor" / name), _load(tmp_path / "Masks" / name)
        assert mask.shape == image.shape
        assert set(np.unique(mask)) == {0, 255}  # binary and non-empty


def test_zero_images_still_lays_out_the_folders(tmp_path: Path) -> None:
    generate(tmp_path / "out", 0, 0, seed=0, **SMALL)
    assert all((tmp_path / "out" / folder).is_dir() for folder in ("Healthy", "Tumor", "Masks"))


@pytest.mark.parametrize(("min_size", "max_size"), [(65, 64), (16, 64)])
def test_rejects_bad_sizes(tmp_path: Path, min_size: int, max_size: int) -> None:
    with pytest.raises(ValueError, match="min_size"):
        generate(tmp_path, 1, 1, seed=0, min_size=min_size, max_size=max_size, progress=False)


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    generate(tmp_path / "a", 3, 3, seed=11, **SMALL)
    generate(tmp_path / "b", 3, 3, seed=11, **SMALL)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 9
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_first_images_do_not_depend_on_how_many_are_generated(tmp_path: Path) -> None:
    generate(tmp_path / "few", 2, 2, seed=5, **SMALL)
    generate(tmp_path / "many", 6, 5, seed=5, **SMALL)
    for rel in sorted(p.relative_to(tmp_path / "few") for p in (tmp_path / "few").rglob("*.png")):
        assert (tmp_path / "few" / rel).read_bytes() == (tmp_path / "many" / rel).read_bytes(), rel


def test_seed_changes_the_images(tmp_path: Path) -> None:
    generate(tmp_path / "a", 2, 0, seed=1, **SMALL)
    generate(tmp_path / "b", 2, 0, seed=2, **SMALL)
    for i in (1, 2):
        name = f"Healthy/ct_healthy ({i}).png"
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes()


def test_sizes_square_and_within_range(dataset: Path) -> None:
    for path in dataset.rglob("*.png"):
        height, width = _load(path).shape
        assert height == width and 64 <= width <= 96, path


def test_fixed_size(tmp_path: Path) -> None:
    generate(tmp_path, 2, 2, seed=0, min_size=80, max_size=80, progress=False)
    assert {_load(p).shape for p in tmp_path.rglob("*.png")} == {(80, 80)}


def test_masks_mark_pixels_the_tumor_changed(dataset: Path) -> None:
    for i in range(1, 25):
        image = _load(dataset / "Tumor" / f"ct_tumor ({i}).png")
        mask = _load(dataset / "Masks" / f"ct_tumor ({i}).png") > 0
        # The same slice rendered without its tumor: same anatomy and noise, no mass, oedema or mass effect.
        plain, no_mask = synthetic._render((7, 1, i), 64, 96, tumor=False)
        assert no_mask is None and plain.shape == image.shape
        change = np.abs(image.astype(int) - plain.astype(int))
        assert change[mask].mean() > 15, i
        assert (change[mask] > 3).mean() > 0.9, i
        far = ndimage.distance_transform_edt(~mask) > image.shape[0] // 2
        assert not change[far & (image == 0)].any(), i  # the air around the head is untouched


def test_healthy_render_is_what_was_saved(dataset: Path) -> None:
    for i in (1, 2, 3):
        image, mask = synthetic._render((7, 0, i), 64, 96, tumor=False)
        assert mask is None
        assert np.array_equal(image, _load(dataset / "Healthy" / f"ct_healthy ({i}).png"))


def _enclosed_by_bone(image: np.ndarray) -> np.ndarray:
    """Pixels with bone (near white) somewhere above, below, left and right of them."""
    bone = image >= 200
    return (
        np.maximum.accumulate(bone, axis=0)
        & np.maximum.accumulate(bone[::-1], axis=0)[::-1]
        & np.maximum.accumulate(bone, axis=1)
        & np.maximum.accumulate(bone[:, ::-1], axis=1)[:, ::-1]
    )


def test_masks_lie_inside_the_skull(dataset: Path) -> None:
    for i in range(1, 25):
        image = _load(dataset / "Tumor" / f"ct_tumor ({i}).png")
        mask = _load(dataset / "Masks" / f"ct_tumor ({i}).png") > 0
        assert (image[mask] > 0).all(), i  # never on the background
        assert _enclosed_by_bone(image)[mask].all(), i
        assert (image[mask] < 200).mean() > 0.95, i  # and not on the skull itself


def test_tumors_are_both_bright_and_dark_and_varied_in_size(dataset: Path) -> None:
    contrasts, areas = [], []
    for i in range(1, 25):
        image = _load(dataset / "Tumor" / f"ct_tumor ({i}).png").astype(float)
        mask = _load(dataset / "Masks" / f"ct_tumor ({i}).png") > 0
        around = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(mask, iterations=3)
        contrasts.append(np.median(image[mask]) - np.median(image[around & (image > 60)]))
        areas.append(mask.mean())
    assert min(contrasts) < -10 and max(contrasts) > 10  # hypodense and hyperdense masses
    assert max(areas) > 4 * min(areas)


def test_no_class_cue_in_size_or_format(dataset: Path) -> None:
    sizes = {}
    for folder in ("Healthy", "Tumor"):
        images = [_load(path) for path in sorted((dataset / folder).iterdir())]
        sizes[folder] = np.array([image.shape[0] for image in images])
        assert {image.dtype for image in images} == {np.dtype(np.uint8)}
    for found in sizes.values():
        assert found.min() < 72 and found.max() > 88  # each class spans the size range
    assert abs(sizes["Healthy"].mean() - sizes["Tumor"].mean()) < 6


def test_no_class_cue_in_the_anatomy(dataset: Path) -> None:
    """On average, healthy and tumor slices show the same amount of head and of bone."""
    stats: dict[str, list[tuple[float, float]]] = {"Healthy": [], "Tumor": []}
    for folder, stem in (("Healthy", "ct_healthy"), ("Tumor", "ct_tumor")):
        for i in range(1, 25):
            image = _load(dataset / folder / f"{stem} ({i}).png").astype(float)
            stats[folder].append(((image > 0).mean(), (image >= 200).mean()))
    healthy, tumor = np.array(stats["Healthy"]), np.array(stats["Tumor"])
    assert np.allclose(healthy.mean(axis=0), tumor.mean(axis=0), rtol=0.15)  # head and bone areas
