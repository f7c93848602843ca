"""Decode any image file to one grayscale channel and preprocess it: the single code path that
training, calibration, evaluation and (later) prediction share, plus a cache of decoded splits.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from pipeline.progress import progress as progress_bar

from pipeline.errors import ImageDecodeError
from pipeline.io import atomic_path

# Bump when `load_image` changes its output, so cached arrays are rebuilt.
PREPROCESS_VERSION = 1


def read_image(path: Path) -> Image.Image:
    """Open and fully decode a file (so truncation is caught here), with EXIF orientation applied."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(path, "empty file (0 bytes)")
        with Image.open(path) as image:
            image.load()
            oriented = ImageOps.exif_transpose(image)
            oriented.format = image.format  # the copy would otherwise forget the file's real format
            return oriented
    except ImageDecodeError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image file PIL can identify") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(path, f"cannot decode: {err}") from None


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 array in [0, 1].

    8-bit data keeps its absolute scale (value / 255). Transparent pixels become black, as the
    background of a CT slice is. Deeper data (16-bit, 32-bit, float) carries no common window, so it
    is stretched to its own range.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        return ((values - low) / (high - low) if high > low else np.zeros_like(values)).astype(np.float32)
    if image.mode in ("RGBA", "LA", "PA", "P"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def resize_square(gray: np.ndarray, image_size: int) -> np.ndarray:
    """Pad to a centred square with black, then resize: anatomy keeps its aspect ratio."""
    height, width = gray.shape
    side = max(height, width)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = gray
    resized = Image.fromarray(square, mode="F").resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def load_image(path: Path, image_size: int) -> np.ndarray:
    """Decode and preprocess one file to a (image_size, image_size) float32 array in [0, 1]."""
    return resize_square(to_grayscale(read_image(path)), image_size)


def load_images(
    paths: Sequence[Path], image_size: int, *, workers: int | None = None, progress: bool = True
) -> np.ndarray:
    """Decode many files in parallel to a (n, image_size, image_size, 1) float32 batch."""
    workers = workers or os.cpu_count() or 1
    batch = np.empty((len(paths), image_size, image_size, 1), dtype=np.float32)

    def decode(index: int) -> None:
        batch[index, :, :, 0] = load_image(paths[index], image_size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in progress_bar(pool.map(decode, range(len(paths))), desc="decode", total=len(paths),
                              enabled=progress):
            pass
    return batch


def load_cached(
    paths: Sequence[Path], content_hashes: Sequence[str], image_size: int, cache_dir: Path,
    *, progress: bool = True,
) -> np.ndarray:
    """`load_images`, decoded once: the batch is kept in `cache_dir` under a key made of the files'
    content hashes, the image size and the preprocessing version, so later epochs, stages and reruns
    read one array instead of decoding again."""
    key = hashlib.sha256(json.dumps(
        {"version": PREPROCESS_VERSION, "image_size": image_size, "files": list(content_hashes)}
    ).encode()).hexdigest()[:32]
    cached = Path(cache_dir) / f"{key}.npy"
    if cached.exists():
        return np.load(cached)
    batch = load_images(paths, image_size, progress=progress)
    with atomic_path(cached) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, batch)
    return batch
