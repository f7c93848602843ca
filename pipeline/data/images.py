"""Decode any image file (PNG, JPEG, TIFF, ... or a DICOM slice) to one grayscale channel and
preprocess it to the model's input: the single code path that training, calibration, evaluation,
prediction and the served model share, plus a cache of decoded splits.

The model's input has `preprocess.channels` channels: channel 0 is the slice as decoded (a DICOM slice
through `preprocess.dicom_window`), on which the head is found, cropped to and intensity-stretched;
each of `preprocess.extra_windows` adds the same slice's Hounsfield units through that window, blanked,
cropped, padded and resized with channel 0's geometry but not stretched (a Hounsfield window means the
same on every scanner). An already windowed image (PNG, JPEG) has no Hounsfield units left, so with
extra windows it is refused, one file's error. With `preprocess.neighbours`, the neighbouring slices'
channel 0 follow (`pipeline.data.neighbours`, stacked from a scan's slices once each is decoded here).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.core.config import MAX_PIXELS, PreprocessConfig
from pipeline.core.errors import ImageDecodeError
from pipeline.core.io import atomic_path
from pipeline.core.progress import progress as progress_bar
from pipeline.data.dicom import apply_window, is_dicom, read_hounsfield, write_ct_slice
from pipeline.data.guards import HEAD_BYTES, check_content, check_pixels, not_an_image
from pipeline.data.head import bounding_box, head_mask, normalize_intensity

log = logging.getLogger(__name__)
# Bump when `load_channels` changes its output for the same config, so cached arrays are rebuilt.
PREPROCESS_VERSION = 3
BLANK_HU = -1024.0  # air: what `blanked_copy` puts outside the head of a slice in Hounsfield units
NORMALIZE_PERCENTILES = (1.0, 99.0)  # the head's intensities stretched to [0, 1] between these
# Files decoded at once, whatever the cores: a slice at preprocess.max_pixels (4096 x 4096) takes about
# 0.2 GB while it is decoded and preprocessed, so predict over a folder of them stays under 2 GB with
# TensorFlow's 1 GB (measured: python -m bench.hostile_inputs).
DECODE_WORKERS = min(3, os.cpu_count() or 1)

Source = Path | bytes  # a file, or the bytes of one (an upload to the served model)
# `read_image` refuses an image above preprocess.max_pixels from its header, in one line naming it; Pillow's
# warning about images above its own 89-megapixel mark would only be noise before that line.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class Decoded:
    """A slice as one grey channel in [0, 1], its head (found when it was checked), and what the
    manifest records about the file; a DICOM slice's Hounsfield units too where `extra_windows` read them."""

    pixels: np.ndarray
    head: np.ndarray  # bool, the pixels' shape (`head.head_mask`)
    width: int
    height: int
    mode: str
    format: str
    hounsfield: np.ndarray | None = None  # kept only where `preprocess.extra_windows` asks for them


def read_image(source: Source, name: str | Path | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image (so truncation is caught here), with EXIF orientation applied.
    One of more than `max_pixels` pixels is refused from its header, before it is decoded; of a file
    with several frames (a multi-page TIFF, an animated GIF) the first is read, and a warning says so."""
    name = name if name is not None else source
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else Path(source).open("rb")
    except OSError as err:
        raise ImageDecodeError(name, f"cannot read: {err.strerror or err}") from None
    with handle:
        head = handle.read(HEAD_BYTES)
        if not head:
            raise ImageDecodeError(name, "empty file (0 bytes)")
        handle.seek(0)
        try:
            with Image.open(handle) as image:
                check_pixels(name, image.width, image.height, max_pixels)
                if getattr(image, "is_animated", False):
                    log.warning("%s: a %s of several frames: only frame 1 is used", name, image.format)
                image.load()
                oriented = ImageOps.exif_transpose(image)
                oriented.format = image.format  # the copy would otherwise forget the file's real format
                return oriented
        except ImageDecodeError:
            raise
        except Image.UnidentifiedImageError:
            raise ImageDecodeError(name, not_an_image(head, handle)) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ImageDecodeError(name, f"cannot decode: {err}") from None


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 array in [0, 1].

    8-bit data keeps its absolute scale (value / 255). Transparent pixels become black, as the
    background of a CT slice is. Deeper data (16-bit, 32-bit, float) carries no common window, so it
    is stretched to the range of its finite values; NaN and infinite values stay non-finite, for
    `decode` to refuse the slice instead of scoring what is left.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float32)
        finite = np.isfinite(values)
        kept = values if finite.all() else values[finite]
        low, high = (float(kept.min()), float(kept.max())) if kept.size else (0.0, 0.0)
        return ((values - low) / (high - low) if high > low else values - low).astype(np.float32)
    if image.mode in ("RGBA", "LA", "PA", "P"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    gray /= 255.0  # in place: a slice at preprocess.max_pixels is 64 MB as float32
    return gray


def decode(source: Source, config: PreprocessConfig, name: str | Path | None = None) -> Decoded:
    """A DICOM slice in Hounsfield units seen through `config.dicom_window`, or any other image by
    `to_grayscale`; ImageDecodeError for a file above `config.max_pixels` (before it is decoded) or
    with nothing to score (`guards.check_content`). `name` is what errors call a source given as bytes."""
    name = name if name is not None else source if isinstance(source, Path) else "<bytes>"
    hounsfield = None
    if is_dicom(source):
        hounsfield, meta = read_hounsfield(source, name, config.max_pixels)
        window = config.dicom_window
        gray = apply_window(hounsfield, window.level, window.width)
        hounsfield = hounsfield if config.extra_windows else None
    else:
        image = read_image(source, name, config.max_pixels)
        gray = to_grayscale(image)
        suffix = Path(name).suffix.lstrip(".").upper()
        meta = {"width": image.width, "height": image.height, "mode": image.mode}
        meta["format"] = image.format or suffix
    return Decoded(gray, check_content(name, gray, config.head.threshold), **meta, hounsfield=hounsfield)


def extra_channels(
    hounsfield: np.ndarray | None, config: PreprocessConfig, name: str | Path, kind: str = "windowed"
) -> list[np.ndarray]:
    """The slice's Hounsfield units through each of `config.extra_windows` (none: an empty list);
    ImageDecodeError naming `name` for a slice without Hounsfield units (`kind`: what it is, e.g. PNG)."""
    if not config.extra_windows:
        return []
    if hounsfield is None:
        raise ImageDecodeError(
            name,
            f"a {kind} image holds one window, already applied; this detector reads "
            f"{config.scored_channels} "
            "Hounsfield windows (preprocess.extra_windows): give it DICOM or NIfTI",
        )
    return [apply_window(hounsfield, window.level, window.width) for window in config.extra_windows]


def resize_square(gray: np.ndarray, image_size: int) -> np.ndarray:
    """Pad to a centred square with black, then resize: anatomy keeps its aspect ratio."""
    height, width = gray.shape
    side = max(height, width)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = gray
    resized = Image.fromarray(square, mode="F").resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


@dataclass(frozen=True)
class Geometry:
    """Where the model's (image_size, image_size) grid lies on a decoded slice: the slice's shape and
    the crop box `preprocess` took (the whole slice when it does not crop), which was then padded to a
    centred square and resized. `to_slice` inverts it, so a map on the model's grid lands on the
    slice's own pixels."""

    shape: tuple[int, int]  # the decoded slice's (rows, columns)
    box: tuple[int, int, int, int]  # the crop: top, bottom, left, right (bottom and right exclusive)

    @property
    def crop(self) -> tuple[slice, slice]:
        top, bottom, left, right = self.box
        return slice(top, bottom), slice(left, right)

    @property
    def side(self) -> int:
        """The side of the square the crop was padded to before resizing."""
        top, bottom, left, right = self.box
        return max(bottom - top, right - left)


def slice_geometry(gray: np.ndarray, config: PreprocessConfig, mask: np.ndarray | None = None) -> Geometry:
    """The geometry `preprocess` gives `gray` under `config`; `mask` is its head mask when already found."""
    rows, cols = gray.shape
    if config.head.crop:
        mask = head_mask(gray, config.head.threshold) if mask is None else mask
        crop = bounding_box(mask, config.head.margin)
        return Geometry((rows, cols), (crop[0].start, crop[0].stop, crop[1].start, crop[1].stop))
    return Geometry((rows, cols), (0, rows, 0, cols))


def preprocess_with_geometry(
    gray: np.ndarray,
    config: PreprocessConfig,
    companion: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """`preprocess`, with the geometry that maps its output back onto `gray` (see `to_slice`); `mask` is
    the slice's head mask where it was already found (`Decoded.head`)."""
    head = config.head
    if head.mask or head.crop or config.normalize:
        mask = head_mask(gray, head.threshold) if mask is None else mask
        if config.normalize:
            gray = normalize_intensity(gray, mask, *NORMALIZE_PERCENTILES)
        if head.mask:
            gray = np.where(mask, gray, np.float32(0.0))
    geometry = slice_geometry(gray, config, mask)
    if head.crop:
        gray = gray[geometry.crop]
        companion = companion[geometry.crop] if companion is not None else None
    resized = None if companion is None else resize_square(companion.astype(np.float32), config.image_size)
    return resize_square(gray, config.image_size), resized, geometry


def preprocess(
    gray: np.ndarray,
    config: PreprocessConfig,
    companion: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A decoded slice -> the model's (image_size, image_size) input: the head found (or `mask`),
    everything outside it blanked, cropped to it, intensities normalised, padded to a square and resized,
    as `config` asks. `companion` (a pixel mask of the same size, e.g. a tumor outline) gets the same
    crop, padding and resizing, so that it stays aligned with the image."""
    image, resized, _ = preprocess_with_geometry(gray, config, companion, mask)
    return image, resized


def to_slice(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A (image_size, image_size) array on the model's grid (a residual map, ...) -> float32 on the
    decoded slice's own (rows, columns) grid: resized back to the padded square (bilinear), the padding
    removed, placed in the crop box, zero outside it. The inverse of `preprocess`'s geometry."""
    top, bottom, left, right = geometry.box
    height, width, side = bottom - top, right - left, geometry.side
    values = np.asarray(image, dtype=np.float32)
    if values.shape != (side, side):
        low, high = float(values.min()), float(values.max())
        resized = Image.fromarray(values, mode="F").resize((side, side), Image.Resampling.BILINEAR)
        values = np.clip(np.asarray(resized, dtype=np.float32), low, high)  # trims rounding only
    pad_top, pad_left = (side - height) // 2, (side - width) // 2
    placed = np.zeros(geometry.shape, dtype=np.float32)
    placed[top:bottom, left:right] = values[pad_top : pad_top + height, pad_left : pad_left + width]
    return placed


def blanked_png(source: Path, config: PreprocessConfig) -> bytes:
    """The file as an 8-bit grayscale PNG, its own size, with everything outside the head black: how
    a source without burned-in text, overlays or background would have delivered it."""
    return _blanked(decode(source, config))


def blanked_copy(source: Path, config: PreprocessConfig) -> bytes:
    """`blanked_png`, except that a DICOM slice read through `config.extra_windows` stays a DICOM slice
    in Hounsfield units, air (`BLANK_HU`) outside the head: a PNG would keep the brain window alone."""
    decoded = decode(source, config)
    if decoded.hounsfield is None:
        return _blanked(decoded)
    hounsfield = np.where(decoded.head, decoded.hounsfield, np.float32(BLANK_HU))
    return write_ct_slice(io.BytesIO(), np.clip(hounsfield, BLANK_HU, None)).getvalue()


def _blanked(decoded: Decoded) -> bytes:
    blanked = np.where(decoded.head, decoded.pixels, 0.0)
    buffer = io.BytesIO()
    Image.fromarray(np.round(blanked * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def model_input(
    gray: np.ndarray,
    head: np.ndarray,
    hounsfield: np.ndarray | None,
    config: PreprocessConfig,
    name: str | Path,
    kind: str = "windowed",
) -> tuple[np.ndarray, Geometry]:
    """A decoded slice (`gray`: channel 0, `head`: its head mask, `hounsfield`: its HU where it has
    them) -> its own (image_size, image_size, scored_channels) float32 channels in [0, 1] and its geometry.
    Channel 0 is `preprocess_with_geometry`'s; each extra window's channel is blanked outside the head
    (with `head.mask`), cropped, padded and resized as channel 0 is, and not stretched. Without extra
    windows it is channel 0 alone; with them, a slice without HU is an ImageDecodeError naming `name`."""
    extras = extra_channels(hounsfield, config, name, kind)
    image, _, geometry = preprocess_with_geometry(gray, config, mask=head)
    channels = [image]
    for extra in extras:
        if config.head.mask:
            extra = np.where(head, extra, np.float32(0.0))
        channels.append(resize_square(extra[geometry.crop], config.image_size))
    return np.stack(channels, axis=-1), geometry


def load_channels(source: Source, config: PreprocessConfig, name: str | Path | None = None) -> np.ndarray:
    """Decode and preprocess one file to its own (image_size, image_size, scored_channels) float32
    channels: the model's input less any neighbouring slices' (`pipeline.data.neighbours`)."""
    name = name if name is not None else source if isinstance(source, Path) else "<bytes>"
    decoded = decode(source, config, name)
    return model_input(decoded.pixels, decoded.head, decoded.hounsfield, config, name, decoded.format)[0]


def load_image(source: Source, config: PreprocessConfig, name: str | Path | None = None) -> np.ndarray:
    """Decode and preprocess one file to a (image_size, image_size) float32 array in [0, 1]: the model
    input's channel 0 (`load_channels`)."""
    return load_channels(source, config, name)[..., 0]


def load_images(
    paths: Sequence[Path], config: PreprocessConfig, *, workers: int | None = None, progress: bool = True
) -> np.ndarray:
    """Decode many files in parallel (`DECODE_WORKERS` at once) to a (n, image_size, image_size,
    scored_channels) float32 batch: each file's own channels (neighbours are stacked from a split's
    rows afterwards, `pipeline.data.neighbours`)."""
    workers = workers or DECODE_WORKERS
    size = config.image_size
    batch = np.empty((len(paths), size, size, config.scored_channels), dtype=np.float32)

    def decode_one(index: int) -> None:
        batch[index] = load_channels(paths[index], config)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in progress_bar(
            pool.map(decode_one, range(len(paths))), desc="decode", total=len(paths), enabled=progress
        ):
            pass
    return batch


def load_cached(
    paths: Sequence[Path],
    content_hashes: Sequence[str],
    config: PreprocessConfig,
    cache_dir: Path,
    *,
    progress: bool = True,
) -> np.ndarray:
    """`load_images`, decoded once: the batch is kept in `cache_dir` under a key made of the files'
    content hashes, the preprocessing config (its windows too) and version, so later epochs, stages and
    reruns read one array instead of decoding again. `neighbours` is not in the key: it changes no
    file's own channels, so the 2.5D detector reads the arrays the 2D one decoded."""
    key = hashlib.sha256(
        json.dumps(
            {
                "version": PREPROCESS_VERSION,
                "preprocess": config.model_dump(mode="json", exclude={"neighbours"}),
                "files": list(content_hashes),
            }
        ).encode()
    ).hexdigest()[:32]
    cached = Path(cache_dir) / f"{key}.npy"
    if cached.exists():
        return np.load(cached)
    batch = load_images(paths, config, progress=progress)
    with atomic_path(cached) as tmp, open(tmp, "wb") as handle:
        np.save(handle, batch)
    return batch
