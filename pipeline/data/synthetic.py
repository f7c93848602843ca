"""The built-in dataset: seeded procedural CT-like axial brain slices, with and without a tumor.

It lets the whole pipeline run (demos, end-to-end tests) without downloading anything, and its tumor
masks give a pixel-level ground truth that the public dataset lacks. Files are laid out like the
public Kaggle brain-CT dataset, so every later stage treats both sources alike:

    out_dir/Healthy/ct_healthy (i).png   i = 1..n_healthy
    out_dir/Tumor/ct_tumor (i).png       i = 1..n_tumor
    out_dir/Masks/ct_tumor (i).png       the tumor's mass, 0/255, same size as its image

Healthy and tumor slices come from one anatomy generator with the same size, noise and format, so
the tumor (mass, oedema, mass effect) is the only thing that tells the classes apart.

`generate_volumes` writes the same anatomy as whole scans instead: one NIfTI volume (or DICOM series)
per patient in Hounsfield units, from the skull base (little brain, much bone) to the skull top, with
a lesion mask (or DICOM-SEG) for the patients that have one (a tumor, a haemorrhage-like crescent
against the skull's inner edge, or a bright parenchymal blob, over a few middle slices), for the
scan path of `data=local`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.data.classes import FOLDERS, HEALTHY, MASKS, TUMOR
from pipeline.progress import progress as progress_bar

_HEALTHY, _TUMOR = 0, 1
_FOLDERS = {_HEALTHY: (FOLDERS[HEALTHY], "ct_healthy"), _TUMOR: (FOLDERS[TUMOR], "ct_tumor")}
_REFERENCE_SIZE = 384.0  # blur and line widths are tuned at this size and scale with the canvas
_TABLE = 4096  # samples per turn of the tabulated angular functions
_MARGIN = 4.0  # pixels (at the reference size) kept around the head for the blur to spread into


def generate(
    out_dir: Path,
    n_healthy: int,
    n_tumor: int,
    seed: int,
    min_size: int = 256,
    max_size: int = 512,
    progress: bool = True,
) -> None:
    """Write `n_healthy` healthy and `n_tumor` tumor slices (plus tumor masks) under `out_dir`.

    Each image has its own generator seeded by (seed, class, index), so a file depends only on
    those three and the size range: the same call rewrites byte-identical files, and asking for
    more images leaves the first ones unchanged. Images are square 8-bit grayscale PNGs whose side
    is drawn uniformly from [min_size, max_size], like the mixed resolutions of the real data.

    The mask marks the solid tumor mass only (255 there, 0 elsewhere): exactly the pixels the mass
    was painted on. The surrounding oedema halo and the tissue displaced by mass effect are left
    out of it, as a radiologist outlining the lesion would.
    """
    if n_healthy < 0 or n_tumor < 0:
        raise ValueError(f"image counts must be >= 0, got n_healthy={n_healthy}, n_tumor={n_tumor}")
    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    out_dir = Path(out_dir)
    for folder in (*(name for name, _ in _FOLDERS.values()), MASKS):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(_HEALTHY, i) for i in range(1, n_healthy + 1)] + [(_TUMOR, i) for i in range(1, n_tumor + 1)]
    for class_index, i in progress_bar(jobs, desc="synthetic CT", enabled=progress):
        folder, stem = _FOLDERS[class_index]
        image, mask = _render((seed, class_index, i), min_size, max_size, tumor=class_index == _TUMOR)
        name = f"{stem} ({i}).png"
        # compress_level=1: a third of the default's time for files ~15% larger
        Image.fromarray(image).save(out_dir / folder / name, compress_level=1)
        if mask is not None:
            Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / MASKS / name, compress_level=1)


LESIONS = ("tumor", "crescent", "blob")
_BRAIN_WINDOW_HU = 80.0  # the 8-bit slices are a brain window: 0 -> 0 HU, 1 -> 80 HU
_BONE = 0.85  # above this fraction of full scale the 8-bit slice shows bone (clipped by the window)


def generate_volumes(
    out_dir: Path,
    patients: int,
    slices: int,
    size: int,
    lesion_share: float,
    seed: int,
    progress: bool = True,
    file_format: str = "nifti",
) -> None:
    """Write one scan per patient: `out_dir/patient<i>/head.nii.gz` and its `head_mask.nii.gz`, or with
    `file_format="dicom"` a DICOM series `out_dir/patient<i>/ct/` and its DICOM-SEG `lesion.seg.dcm` (both
    masks empty for a clean scan).

    Every patient's anatomy is one seeded head, cut at `slices` levels: the head's cross-section grows
    from the skull base and shrinks to the skull top, the lowest levels are mostly bone and soft
    tissue and the highest mostly skull, as in a real scan. A share `lesion_share` of the patients
    carries one lesion over 2-4 consecutive middle slices, its kind drawn from LESIONS.
    """
    for index in progress_bar(range(patients), desc="synthetic volumes", enabled=progress):
        rng = np.random.default_rng((seed, 2, index))
        lesion = LESIONS[int(rng.integers(len(LESIONS)))] if rng.random() < lesion_share else None
        first = int(rng.integers(int(0.35 * slices), int(0.6 * slices)))
        lesioned = range(first, first + int(rng.integers(2, 5))) if lesion else range(0)
        with_tumor, tumor_mask = _render((seed, 2, index), size, size, tumor=lesion == "tumor")
        clean_image = _render((seed, 2, index), size, size, tumor=False)[0] / np.float32(255)
        tumor_image = with_tumor if lesion == "tumor" else None
        found = _bright_lesion(clean_image, lesion, rng) if lesion in ("crescent", "blob") else None
        hounsfield = np.empty((slices, size, size), dtype=np.float32)  # displayed slices, feet to head
        masks = np.zeros((slices, size, size), dtype=bool)
        for k in range(slices):
            level = k / max(slices - 1, 1)
            gray, lesion_mask = clean_image, None
            if k in lesioned and tumor_image is not None:
                gray, lesion_mask = tumor_image / np.float32(255), tumor_mask
            elif k in lesioned and found is not None:
                gray, lesion_mask = found
            gray, lesion_mask = _at_level(gray, lesion_mask, level, rng)
            hounsfield[k] = _hounsfield(gray)
            if lesion_mask is not None:
                masks[k] = lesion_mask
        folder = Path(out_dir) / f"patient{index:03d}"
        (_write_dicom if file_format == "dicom" else _write_nifti)(folder, hounsfield, masks)


_PIXEL_MM, _SLICE_MM = 0.8, 5.0  # in-plane pixels, thick axial slices


def _write_nifti(folder: Path, hounsfield: np.ndarray, masks: np.ndarray) -> None:
    import nibabel as nib  # here: only the volume source needs it

    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([_PIXEL_MM, _PIXEL_MM, _SLICE_MM, 1.0])
    volume = np.stack([_display_to_ras(image) for image in hounsfield], axis=2)
    mask = np.stack([_display_to_ras(image) for image in masks], axis=2).astype(np.uint8)
    nib.save(nib.Nifti1Image(volume, affine), folder / "head.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), folder / "head_mask.nii.gz")  # empty: a clean scan


def _write_dicom(folder: Path, hounsfield: np.ndarray, masks: np.ndarray) -> None:
    """An axial series as a scanner writes it (a displayed slice is the stored pixel order) + its SEG."""
    from pipeline.data.dicom import HU_RANGE, write_ct_slice
    from pipeline.data.series import find_series, write_segmentation

    (folder / "ct").mkdir(parents=True, exist_ok=True)
    files = [
        write_ct_slice(
            folder / "ct" / f"{k:03d}.dcm",
            np.clip(image, *HU_RANGE),
            patient=folder.name,
            series=f"{folder.name}/ct",
            position=k * _SLICE_MM,
            spacing=_PIXEL_MM,
        )
        for k, image in enumerate(hounsfield)
    ]
    (series,), _, _ = find_series(files)
    write_segmentation(series, masks, folder / "lesion.seg.dcm", "synthetic")  # empty: a clean scan


def _display_to_ras(image: np.ndarray) -> np.ndarray:
    """A displayed slice (anterior up, patient's right on the left) -> the RAS+ (x, y) plane."""
    return image.T[::-1, ::-1]


def _hounsfield(gray: np.ndarray) -> np.ndarray:
    """A brain-window slice (fractions of full scale) -> HU: air outside, bone where the window clips."""
    hu = gray * _BRAIN_WINDOW_HU
    hu = np.where(gray >= _BONE, 400 + (gray - _BONE) * 4000, hu)
    return np.where(gray <= 0, -1000.0, hu).astype(np.float32)


def _bright_lesion(gray: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A haemorrhage-like finding, bright in the brain window: a crescent along the skull's inner edge
    (epidural or subdural) or a blob in the parenchyma; returns the slice with it and its mask."""
    skull = gray >= _BONE
    inside = ndimage.binary_fill_holes(skull) & ~skull
    depth = ndimage.distance_transform_edt(inside)
    y, x = np.nonzero(inside)
    cy, cx = y.mean(), x.mean()
    if kind == "crescent":
        yy, xx = np.mgrid[: gray.shape[0], : gray.shape[1]]
        angle = np.angle((xx - cx) + 1j * (yy - cy))
        start = rng.uniform(-np.pi, np.pi)
        sector = np.angle(np.exp(1j * (angle - start))) % (2 * np.pi) < rng.uniform(0.6, 1.2)
        mask = inside & sector & (depth <= rng.uniform(2.0, 4.0) * gray.shape[0] / 96)
    else:
        deep = np.flatnonzero(depth.ravel() > depth.max() * 0.4)
        centre = np.unravel_index(deep[int(rng.integers(len(deep)))], gray.shape)
        radius = rng.uniform(0.04, 0.07) * gray.shape[0]
        yy, xx = np.mgrid[: gray.shape[0], : gray.shape[1]]
        mask = inside & (np.hypot(yy - centre[0], xx - centre[1]) <= radius)
    bright = np.where(mask, rng.uniform(0.75, 0.82) + 0.02 * rng.standard_normal(gray.shape), gray)
    return bright.astype(np.float32), mask


def _at_level(
    gray: np.ndarray, mask: np.ndarray | None, level: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """The slice as it looks at `level` (0 skull base, 1 skull top): the head's cross-section scaled
    about its centre; near the base the brain gives way to bone and soft tissue, near the top the
    skull cap takes most of the slice."""
    scale = 0.45 + 0.55 * math.sin(math.pi * (0.12 + 0.8 * level))
    centre = (np.array(gray.shape) - 1) / 2
    zoom = {"matrix": np.full(2, 1 / scale), "offset": centre - centre / scale}
    scaled = ndimage.affine_transform(gray, order=1, **zoom)
    mask = None if mask is None else ndimage.affine_transform(mask.astype(np.uint8), order=0, **zoom) > 0
    head = scaled > 0.02
    if level < 0.15:  # skull base: bone and soft tissue where the brain would be
        base = 0.5 + 0.45 * ndimage.gaussian_filter(rng.random(gray.shape), 2.0)
        scaled = np.where(head, np.maximum(scaled, base * (0.15 - level) / 0.15 + scaled * level / 0.15), 0)
    elif level > 0.9:  # skull top: the cap's bone covers the slice
        scaled = np.where(head, np.maximum(scaled, (level - 0.9) / 0.1), 0)
    return scaled.astype(np.float32), mask


def example_png(size: int = 256) -> bytes:
    """One healthy synthetic slice as PNG bytes: the packaged detector's input example, so a model
    trained on patients' scans ships no patient image with it."""
    image, _ = _render((0, _HEALTHY, 1), size, size, tumor=False)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def example_dicom(size: int = 256) -> bytes:
    """`example_png`'s slice as a DICOM file in Hounsfield units: the input example of a detector that
    reads several Hounsfield windows (`preprocess.extra_windows`), which an 8-bit image cannot give."""
    from pipeline.data.dicom import HU_RANGE, write_ct_slice

    image, _ = _render((0, _HEALTHY, 1), size, size, tumor=False)
    hounsfield = np.clip(_hounsfield(image.astype(np.float32) / 255.0), *HU_RANGE)
    return write_ct_slice(io.BytesIO(), hounsfield).getvalue()


def _render(
    key: tuple[int, int, int], min_size: int, max_size: int, tumor: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """One slice as (uint8 image, bool tumor mask or None), fully determined by `key`.

    The image's generator is split into anatomy, tumor and noise streams, so rendering a tumor key
    with `tumor=False` gives the very same slice without its tumor: the tests use this to check
    that the mask covers pixels the tumor changed.
    """
    anatomy_rng, tumor_rng, noise_rng = np.random.default_rng(key).spawn(3)
    head = _anatomy(anatomy_rng, int(anatomy_rng.integers(min_size, max_size + 1)))
    mask = _add_tumor(tumor_rng, head) if tumor else None
    return _scan(head, noise_rng), mask


@dataclass
class _Head:
    """The anatomy of one slice. Arrays cover `crop`, the head's bounding box: air elsewhere."""

    size: int
    crop: tuple[slice, slice]
    head: np.ndarray  # bool: inside the scalp's outer surface
    brain: np.ndarray  # bool: inside the skull's inner surface
    depth: np.ndarray  # 0 at the head's centre, 1 on the skull's inner surface
    room: np.ndarray  # pixels from the skull's inner surface (negative outside the brain)
    shell: np.ndarray  # intensities outside the brain: scalp, bone, air
    content: np.ndarray  # what the brain looks like, drawn over the whole crop
    ventricles: np.ndarray  # bool
    level: float  # parenchyma intensity
    width: float  # brain half-width in pixels


def _anatomy(rng: np.random.Generator, size: int) -> _Head:
    """A head: scalp, skull, parenchyma with grey/white contrast, sulci, fissure and ventricles.

    Intensities are fractions of full scale, as in a brain window: air 0, CSF ~0.1, parenchyma
    ~0.35-0.5, bone ~0.9-1. Every shape is a closed-form function of the head-frame coordinates,
    so the whole slice is a few dozen vectorised float32 array operations over the head's box.
    """
    scale = size / _REFERENCE_SIZE
    cx, cy = (float(c) for c in size / 2 + rng.uniform(-0.03, 0.03, 2) * size)
    a = rng.uniform(0.33, 0.39) * size  # head semi-axes: a left-right, b front-back
    b = min(a * rng.uniform(1.08, 1.22), 0.43 * size)
    egg = rng.uniform(0.0, 0.08)  # skulls are a little broader at the back
    bumps = rng.uniform(0.005, 0.02)
    scalp_px = rng.uniform(0.01, 0.022) * size
    turn = rng.uniform(-0.2, 0.2)
    cos, sin = math.cos(turn), math.sin(turn)
    # Bounding box of the rotated head, with room for the scanner blur to spread.
    pad = scalp_px + _MARGIN * scale + 2
    wide, long = a * (1 + egg) * (1 + bumps) + pad, b * (1 + bumps) + pad
    crop = (
        _box(cy, math.hypot(wide * sin, long * cos), size),
        _box(cx, math.hypot(wide * cos, long * sin), size),
    )

    x = np.arange(crop[1].start, crop[1].stop, dtype=np.float32) + 0.5 - cx
    y = np.arange(crop[0].start, crop[0].stop, dtype=np.float32)[:, None] + 0.5 - cy
    u = cos * x + sin * y  # lateral
    v = cos * y - sin * x  # front (-) to back (+)
    vn = v / b
    un = u / (a * (1 + egg * vn))
    r = np.sqrt(un * un + vn * vn)
    theta = np.arctan2(vn, un)
    around = _angle_index(theta)
    outline = 1 + _harmonics(rng, around, bumps, 2, 6)
    rh = r / outline  # 1 on the skull's outer surface
    ray = np.sqrt(u * u + v * v) / np.maximum(r, 1e-6) * outline  # pixels per unit of rh along each ray

    bone_px = max(2.0, rng.uniform(0.02, 0.032) * size)
    thickness = bone_px * (1 + _harmonics(rng, around, 0.25, 2, 8) + 0.3 * np.clip(vn, 0, None))
    inner = 1 - thickness / ray  # skull's inner surface; the occipital bone is thicker
    room = (inner - rh) * ray
    depth = rh / inner
    brain = depth < 1
    head = rh < 1 + scalp_px / ray
    across = np.clip((rh - inner) / (1 - inner), 0, 1)  # 0 inner table .. 1 outer table
    diploe = rng.uniform(0.0, 0.15) * np.clip((thickness - 3) / 6, 0, 1)  # marrow between the tables, if room
    bone = rng.uniform(0.9, 1.0) - diploe * np.exp(-(((across - 0.5) / 0.22) ** 2))
    shell = np.where(rh <= 1, bone, np.where(head, np.float32(rng.uniform(0.25, 0.38)), np.float32(0)))

    level = rng.uniform(0.36, 0.48)
    csf = rng.uniform(0.04, 0.12)
    width = a - bone_px
    texture = _smooth_field(rng, u.shape, size / rng.uniform(4, 8))
    content = (
        level + rng.uniform(0.01, 0.02) * texture + rng.uniform(0.02, 0.05) * _smoothstep(0.72, 0.9, depth)
    )  # grey matter brighter than white
    ventricles, extent = _ventricles(rng, u, v, width, b - bone_px, (cy - crop[0].start, cx - crop[1].start))
    content = np.where(ventricles, np.float32(csf), content)

    # Sulci: wedge-shaped clefts running in from the cortex at the zero crossings of a many-harmonic
    # function of the angle; the texture field bends them, further angular functions vary their
    # depth and how open they are from region to region (none at all in some heads).
    folds = np.abs(_harmonics(rng, _angle_index(theta + 0.03 * texture), 1.0, 10, 26))
    inward = rng.uniform(0.08, 0.2) * (1 + 0.6 * _harmonics(rng, around, 1.0, 20, 40))
    opening = _smoothstep(1 - inward, 1, depth)
    open_here = max(0.0, rng.uniform(-0.3, 1.0)) * (0.6 + _harmonics(rng, around, 0.4, 1, 4))
    sulci = (
        np.clip(1 - folds / (rng.uniform(0.08, 0.18) * opening + 1e-3), 0, 1)
        * np.minimum(4 * opening, 1)
        * open_here
    )
    rim = np.clip(1 - room / max(0.5, rng.uniform(0, 0.012) * size), 0, 1)  # CSF under the skull
    fissure = (
        np.exp(-((u / (rng.uniform(0.5, 1.1) * scale)) ** 2))
        * ((v < extent[0] - 2 * scale) | (v > extent[1] + 2 * scale))
        * rng.uniform(0.3, 0.7)
    )
    fluid = np.maximum(np.maximum(sulci, fissure), rim * rng.uniform(0.3, 0.9))
    content = content + (csf - content) * fluid
    return _Head(size, crop, head, brain, depth, room, shell, content, ventricles, level, width)


def _ventricles(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    width: float,
    length: float,
    centre: tuple[float, float],
) -> tuple[np.ndarray, tuple[float, float]]:
    """Lateral ventricles as two mirrored crescents, ')(' seen from above, and their front-back extent.

    Each is a band around the parabola |u| = gap + spread * t**2 (t = -1 front tip, 0 waist,
    +1 back tip), so the bodies nearly meet at the midline while the horns diverge; its half-width
    is fullest in the frontal horn, tapers to the tips and wobbles with a smooth field. Only the
    box around the head's centre that can hold them is computed.
    """
    grow = rng.uniform(0.7, 1.35)  # small in the young, large with atrophy
    front = -rng.uniform(0.28, 0.4) * length * math.sqrt(grow)
    back = rng.uniform(0.15, 0.4) * length * math.sqrt(grow)
    waist = front + rng.uniform(0.35, 0.6) * (back - front)
    half = rng.uniform(0.04, 0.065) * width * grow
    gap = half * rng.uniform(1.3, 1.9)  # leaves a septum between the bodies
    spread = rng.uniform(0.06, 0.16) * width * grow
    sides = 1 + rng.uniform(-0.12, 0.12, (2, 3))  # mildly asymmetric
    reach = math.hypot(1.15 * (gap + spread) + 3 * half, max(-front, back)) + 2
    box = (_box(centre[0], reach, u.shape[0]), _box(centre[1], reach, u.shape[1]))
    ventricles = np.zeros(u.shape, dtype=bool)
    u, v = u[box], v[box]
    wobble = 1 + 0.25 * _smooth_field(rng, u.shape, 2 * reach / rng.uniform(3, 5))
    t = np.clip((v - waist) / np.where(v < waist, waist - front, back - waist), -1, 1)
    taper = np.clip(1 - t * t, 0, None) ** 0.35 * (1 + 0.6 * np.clip(-t, 0, None) - 0.3 * np.clip(t, 0, None))
    for side, (g, s, h) in zip((-1, 1), sides, strict=True):
        ventricles[box] |= np.abs(side * u - gap * g - spread * s * t * t) < half * h * taper * wobble
    return ventricles, (front, back)


def _add_tumor(rng: np.random.Generator, head: _Head) -> np.ndarray:
    """Paint one mass into `head.content` and return its mask.

    In order: mass effect (tissue within a few radii pushed outward by a smooth radial warp that
    fades to nothing at the skull), a hypodense oedema halo with finger-like extensions, then the
    mass itself, an irregular blob 4-20% of the brain's diameter across, hyper- or hypodense.
    The mass is placed clear of the skull (with room for half its halo) and off the ventricles.
    """
    shape = head.content.shape
    radius = max(rng.uniform(0.02, 0.10) * 2 * head.width, 1.5)
    bumps = rng.uniform(0.05, 0.25)
    reach = radius * (1 + bumps)
    halo = radius * rng.uniform(0.3, 1.0) + 1.0

    ys, xs = rng.integers(0, shape, (64, 2)).T  # candidate centres: the first one that fits
    ok = (head.room[ys, xs] > reach + 0.5 * halo + 1) & ~head.ventricles[ys, xs]
    pick = int(np.argmax(ok)) if ok.any() else int(np.argmax(head.room[ys, xs]))
    cy, cx = float(ys[pick]) + 0.5, float(xs[pick]) + 0.5

    spread = (radius + halo) * rng.uniform(1.2, 2.0)
    dy, dx, box = _offsets((cy, cx), 2.5 * spread, shape)  # the warp is negligible beyond
    rho = np.sqrt(dx * dx + dy * dy)
    # Sampling nearer the centre pushes content outward; the radial map stays monotonic as shrink < 1.
    still_at_skull = np.clip((1 - head.depth[box]) / 0.15, 0, 1)
    shrink = rng.uniform(0.3, 0.6) * np.exp(-((rho / spread) ** 2)) * still_at_skull
    head.content[box] = ndimage.map_coordinates(
        head.content, [cy - 0.5 + dy * (1 - shrink), cx - 0.5 + dx * (1 - shrink)], order=1, mode="nearest"
    )

    dy, dx, box = _offsets((cy, cx), reach + 4.5 * halo, shape)  # the oedema is negligible beyond
    turn, aspect = rng.uniform(0, np.pi), rng.uniform(0.65, 1.0)
    lu = math.cos(turn) * dx + math.sin(turn) * dy
    lv = (math.cos(turn) * dy - math.sin(turn) * dx) / aspect
    angle = _angle_index(np.arctan2(lv, lu))
    rad = np.sqrt(lu * lu + lv * lv) / (radius * (1 + _harmonics(rng, angle, bumps, 2, 6)))
    fingers = halo * (1 + _harmonics(rng, angle, 0.5, 3, 9))
    head.content[box] -= rng.uniform(0.04, 0.1) * np.exp(-((np.maximum(rad - 1, 0) * radius / fingers) ** 2))

    mass = (rad <= 1) & head.brain[box]
    contrast = rng.uniform(0.14, 0.26) if rng.random() < 0.5 else -rng.uniform(0.11, 0.18)
    grain = rng.uniform(0.01, 0.03) * _smooth_field(rng, mass.shape, max(2.0, radius / rng.uniform(1, 2)))
    head.content[box] = np.where(mass, head.level + contrast + grain, head.content[box])
    mask = np.zeros((head.size, head.size), dtype=bool)
    mask[head.crop][box] = mass
    return mask


def _offsets(
    centre: tuple[float, float], reach: float, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """The box within `reach` of `centre` = (y, x) and its pixels' (y, x) offsets from the centre."""
    box = (_box(centre[0], reach, shape[0]), _box(centre[1], reach, shape[1]))
    dy = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None] + 0.5 - centre[0]
    dx = np.arange(box[1].start, box[1].stop, dtype=np.float32) + 0.5 - centre[1]
    return dy, dx, box


def _scan(head: _Head, rng: np.random.Generator) -> np.ndarray:
    """Composite brain and shell, add quantum noise and a reconstruction-kernel blur, quantise to 8 bits."""
    image = np.where(head.brain, head.content, head.shell)
    image += rng.uniform(0.02, 0.035) * rng.standard_normal(image.shape, dtype=np.float32) * head.head
    blur = rng.uniform(0.5, 0.9) * head.size / _REFERENCE_SIZE  # the crop's margin holds its spread
    scan = np.zeros((head.size, head.size), dtype=np.uint8)
    scan[head.crop] = np.clip(ndimage.gaussian_filter(image, blur) * 255 + 0.5, 0, 255)
    return scan


def _box(centre: float, reach: float, size: int) -> slice:
    """The indices of an axis of length `size` within `reach` of the pixel coordinate `centre`."""
    return slice(max(0, int(centre - reach)), min(size, int(centre + reach) + 1))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """A float32 random field of `shape`, each pixel ~ N(0, 1), with blobs about `spacing` pixels apart.

    A coarse white-noise grid is interpolated with separable Gaussian weights, far cheaper than
    filtering a full-resolution noise image. The products go through einsum rather than BLAS, whose
    worker threads would spin and slow down the element-wise work that follows.
    """
    weights = []
    for length in shape:
        knots = (np.arange(math.ceil(length / spacing) + 4, dtype=np.float32) - 2) * spacing
        pixels = np.arange(length, dtype=np.float32)[:, None] + 0.5
        w = np.exp(-0.5 * ((pixels - knots) / (0.7 * spacing)) ** 2)
        weights.append(w / np.sqrt((w * w).sum(axis=1, keepdims=True)))
    grid = rng.standard_normal((weights[0].shape[1], weights[1].shape[1]), dtype=np.float32)
    return np.einsum("ik,jk->ij", np.einsum("ik,kj->ij", weights[0], grid), weights[1])


def _angle_index(angle: np.ndarray) -> np.ndarray:
    """Angles in [-2pi, 2pi) as indices into the tables of `_harmonics`; computed once per angle map."""
    return (angle * (_TABLE / (2 * np.pi)) + _TABLE).astype(np.int32)


def _harmonics(
    rng: np.random.Generator, index: np.ndarray, amplitude: float, low: int, high: int
) -> np.ndarray:
    """A smooth random periodic function of the angle (harmonics low..high), peaking at +-amplitude.

    Tabulated by one inverse FFT and looked up at `_angle_index(angle)`: far cheaper than a cosine
    per harmonic per pixel.
    """
    orders = np.arange(low, high + 1)
    spectrum = np.zeros(_TABLE // 2 + 1, dtype=complex)
    spectrum[orders] = rng.uniform(-1, 1, orders.size) / orders * np.exp(2j * np.pi * rng.random(orders.size))
    table = np.fft.irfft(spectrum, _TABLE)
    table = np.tile(table * (amplitude / np.abs(table).max()), 2).astype(np.float32)  # covers [-2pi, 2pi)
    return table.take(index, mode="clip")


def _smoothstep(low: float, high: float, x: np.ndarray) -> np.ndarray:
    """0 below `low`, 1 above `high`, a smooth cubic ramp between."""
    t = np.clip((x - low) / (high - low), 0, 1)
    return t * t * (3 - 2 * t)
