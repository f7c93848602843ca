"""Decoding and preprocessing: every mode to one grey channel in [0, 1], bad files named, the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import ImageDecodeError
from pipeline.data import images
from pipeline.data.images import load_cached, load_image, read_image, resize_square, to_grayscale
from tests.conftest import preprocess_config


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "1", "I;16", "I"])
def test_every_mode_becomes_one_channel_in_unit_range(mode: str, tmp_path: Path) -> None:
    gradient = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
    base = Image.fromarray(gradient, mode="L")
    image = (
        base.convert(mode) if mode not in ("I;16", "I") else Image.fromarray(gradient.astype(np.uint16) * 200)
    )
    suffix = ".tif" if mode == "I" else ".png"
    gray = load_image(
        _save(image if mode != "I" else image.convert("I"), tmp_path / f"x{suffix}"), preprocess_config(16)
    )
    assert gray.shape == (16, 16) and gray.dtype == np.float32
    assert 0.0 <= gray.min() and gray.max() <= 1.0 and gray.max() > 0.5


def test_eight_bit_keeps_its_absolute_scale() -> None:
    assert to_grayscale(Image.new("L", (4, 4), 51)).max() == pytest.approx(0.2)


def test_transparent_pixels_are_black() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    assert to_grayscale(rgba).max() == 0.0


def test_sixteen_bit_is_stretched_to_its_range() -> None:
    deep = Image.fromarray(np.array([[1000, 3000]], dtype=np.uint16))
    np.testing.assert_allclose(to_grayscale(deep), [[0.0, 1.0]])


def test_non_square_images_are_padded_not_stretched() -> None:
    wide = np.ones((10, 40), dtype=np.float32)
    square = resize_square(wide, 40)
    assert square[20, :].min() > 0.99  # the band of the image in the middle row
    assert square[0, :].max() == 0.0 and square[-1, :].max() == 0.0  # padding above and below


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello, not an image", "not an image"),
    ],
)
def test_bad_files_are_named_with_a_reason(content: bytes, reason: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        read_image(bad)
    assert info.value.path == bad and str(bad) in str(info.value)


def test_truncated_files_are_caught(tmp_path: Path) -> None:
    good = _save(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)),
        tmp_path / "good.jpg",
    )
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        read_image(truncated)


def test_cache_decodes_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gradient = np.tile(np.linspace(0, 200, 20, dtype=np.uint8), (30, 1))
    paths = [_save(Image.fromarray(gradient + 10 * i), tmp_path / f"{i}.png") for i in range(3)]
    first = load_cached(paths, ["a", "b", "c"], preprocess_config(16), tmp_path / "cache", progress=False)
    monkeypatch.setattr(images, "load_images", lambda *a, **k: pytest.fail("decoded again"))
    np.testing.assert_array_equal(
        load_cached(paths, ["a", "b", "c"], preprocess_config(16), tmp_path / "cache", progress=False), first
    )
    assert first.shape == (3, 16, 16, 1)
    np.testing.assert_allclose(first[2, 8, 8, 0], load_image(paths[2], preprocess_config(16))[8, 8])
