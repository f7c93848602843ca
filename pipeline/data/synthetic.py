"""The built-in dataset: seeded procedural CT-like axial brain slices, with and without a tumor.

It lets the whole pipeline run (demos, end-to-end tests) without downloading anything, and its tumor
masks give a pixel-level ground truth that the public dataset lacks. Files are laid out like the
public Kaggle brain-CT dataset, so every later stage treats both sources alike:

    out_dir/Healthy/ct_healthy (i).png   i = 1..n_healthy
    out_dir/Tumor/ct_tumor (i).png       i = 1..n_tumor
    out_dir/Masks/ct_tumor (i).png       the tumor's mass, 0/255, same size as its image

Healthy and tumor slices come from one anatomy generator with the same size, noise and format, so
the tumor (mass, oedema, mass effect) is the only thing that tells the classes apart.

`generate_volumes` writes phantom head CT scans instead (`data=synthetic_volumes`): one NIfTI volume
(or DICOM series) per patient in Hounsfield units, from the skull base to the vertex, each level drawn
on its own from the patient's anatomy, with a lesion mask (or DICOM-SEG) for the patients that have
one, and each lesioned slice's kind (`classes.KINDS`), which the source records for the manifest's
`kind` column. They are meant to be as hard as real scans in the ways that matter to a detector that
reconstructs healthy anatomy: the skull base is full of bone, air and beam-hardening streaks among
plenty of soft tissue (so it is hard to reconstruct though its brain content, the soft-tissue share of
the head, is not low), the inner table is irregular and fringed by bone's partial volume, and most
bleeds are thin and bright against bone (epidural, subdural) or partial-volumed with CSF in the sulci
(subarachnoid), where they look like healthy anatomy; blood in the dark ventricles stands out.
Densities: air -1000, fat -90, CSF 2-12, white matter 24-29, grey matter 35-40, acute blood 58-78
(its share of a pixel lower in the sulci), bone 1100-1600 at the tables (about half in the diploe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.core.progress import progress as progress_bar
from pipeline.data.classes import (
    EPIDURAL,
    FOLDERS,
    HEALTHY,
    INTRAPARENCHYMAL,
    INTRAVENTRICULAR,
    KINDS,
    MASKS,
    SUBARACHNOID,
    SUBDURAL,
    TUMOR,
)

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


_HU = {"air": -1000.0, "fat": -90.0}  # the rest is drawn per patient, in `_draw_patient`
# The phantoms' seeds: (seed, 3, patient) for the anatomy and the lesions, (seed, 3, patient, 1 + slice)
# for a slice's detail (2 was the former phantoms').
_STREAM = 3
_PIXEL_MM, _SLICE_MM = 0.8, 5.0  # in-plane pixels, thick axial slices

# Where (level range of the lesion's middle slice) and over how many slices (out of 20; scaled with the
# scan) each kind is drawn: bleeds at every level above the skull base, intraventricular blood only
# where the lateral ventricles are.
_PLACES = {
    EPIDURAL: ((0.3, 0.7), (3, 6)),
    SUBDURAL: ((0.35, 0.75), (4, 8)),
    SUBARACHNOID: ((0.32, 0.72), (2, 5)),
    INTRAVENTRICULAR: ((0.42, 0.56), (2, 4)),
    INTRAPARENCHYMAL: ((0.32, 0.65), (1, 3)),
    TUMOR: ((0.35, 0.65), (2, 4)),
}
_VENTRICLE_LEVELS = (0.36, 0.64)  # where the lateral ventricles' bodies are cut
_LOWEST = 0.22  # no lesion below this level: the skull base's bone and air would cover it


def generate_volumes(
    out_dir: Path,
    patients: int,
    slices: int,
    size: int,
    lesion_share: float,
    seed: int,
    progress: bool = True,
    file_format: str = "nifti",
) -> dict[PurePosixPath, dict[int, str]]:
    """Write one scan per patient: `out_dir/patient<i>/head.nii.gz` and its `head_mask.nii.gz`, or with
    `file_format="dicom"` a DICOM series `out_dir/patient<i>/ct/` and its DICOM-SEG `lesion.seg.dcm` (both
    masks empty for a clean scan). Returns each lesioned slice's kind (`classes.KINDS`), by scan (the
    NIfTI file, or the series' folder, relative to `out_dir`) and slice index (0 = lowest): what
    `slicing.slice_scans` records.

    Each patient is one seeded head (outline, skull, tissue densities, ventricles, atrophy) cut at
    `slices` levels from the skull base (level 0) to the vertex (level 1), each level rendered on its own
    in Hounsfield units (`_render_level`): at the skull base petrous ridges, mastoid air cells, sphenoid
    and ethmoid sinuses, orbits, clivus, bone islands and beam-hardening streaks among cerebellum,
    brainstem and temporal lobes; then basal cisterns, Sylvian fissures, ventricles and deep grey
    matter; above them the convexity, its sulci and a skull cut ever more obliquely. The inner table is
    irregular and fringed by bone's partial volume, its width varying around the head and growing
    towards the vertex. A share `lesion_share` of the patients carries one or two lesions over a few
    consecutive slices, the first's kind taken in turn (by patient) from `classes.KINDS`: thin
    lentiform epidural and thin crescent subdural blood against the inner table, sulcal subarachnoid
    blood partial-volumed with CSF, intraventricular blood layering in a ventricle, an intraparenchymal
    haematoma (deep, or a small cortical contusion) with an oedema rim, a tumor (mass, oedema halo);
    lesions lie between levels 0.22 and 1 (`_PLACES`), a second one over other slices. Masks mark the
    painted lesion (more than half of a pixel; a fifth for subarachnoid blood), inside the skull; an
    oedema rim or halo is left out, as a radiologist would. Patient `i`'s scan depends only on
    (`seed`, `i`, `slices`, `size`, `lesion_share`): the same call rewrites the same voxels.
    """
    kinds: dict[PurePosixPath, dict[int, str]] = {}
    for index in progress_bar(range(patients), desc="synthetic volumes", enabled=progress):
        rng = np.random.default_rng((seed, _STREAM, index))
        patient = _draw_patient(rng, size)
        lesions = _plan_lesions(rng, index, slices, lesion_share, size)
        hounsfield = np.empty((slices, size, size), dtype=np.float32)  # displayed slices, feet to head
        masks = np.zeros((slices, size, size), dtype=bool)
        found: dict[int, str] = {}
        for k in range(slices):
            level = k / max(slices - 1, 1)
            here = [(lesion, lesion.taper(k)) for lesion in lesions if k in lesion.slices]
            hounsfield[k], mask = _render_level(
                patient, level, np.random.default_rng((seed, _STREAM, index, 1 + k)), here
            )
            if mask is not None and mask.any():
                masks[k] = mask
                found[k] = here[0][0].kind
        folder = Path(out_dir) / f"patient{index:03d}"
        (_write_dicom if file_format == "dicom" else _write_nifti)(folder, hounsfield, masks)
        if found:
            kinds[PurePosixPath(folder.name, "ct" if file_format == "dicom" else "head.nii.gz")] = found
    return kinds


@dataclass(frozen=True)
class _Patient:
    """One head, the same at every level: geometry in pixels, densities in HU, angular tables."""

    size: int
    centre: tuple[float, float]  # (y, x)
    axes: tuple[float, float]  # outer skull's semi-axes at the widest level: lateral, front-back
    turn: float  # in-plane rotation
    egg: float  # broader at the back
    outline: np.ndarray  # angular table: the outer surface's bumps
    thickness: np.ndarray  # angular table: relative skull thickness
    bone_px: float
    scalp_px: float
    fringe_px: float  # the inner table's partial-volume fringe at mid levels
    jag_px: float  # the inner table's irregularity at mid levels
    white: float
    grey: float
    csf: float
    bone: float
    noise: float  # HU, before the reconstruction blur
    blur: float  # pixels
    atrophy: float  # 0..1: wider sulci, CSF rim and ventricles
    ventricles: tuple[float, ...]  # front, back, waist, half, gap, spread (fractions of the brain)
    sides: np.ndarray  # (2, 3): mild asymmetry of the ventricles


def _draw_patient(rng: np.random.Generator, size: int) -> _Patient:
    px = size / 128
    a = rng.uniform(0.34, 0.38) * size
    b = min(a * rng.uniform(1.1, 1.2), 0.44 * size)
    atrophy = float(rng.uniform(0, 1) ** 1.5)
    grow = 0.8 + 0.5 * atrophy + rng.uniform(-0.1, 0.1)
    front, back = -rng.uniform(0.28, 0.38) * grow**0.5, rng.uniform(0.2, 0.38) * grow**0.5
    half = rng.uniform(0.035, 0.055) * grow
    return _Patient(
        size=size,
        centre=tuple(size / 2 + rng.uniform(-0.02, 0.02, 2) * size),
        axes=(a, b),
        turn=rng.uniform(-0.12, 0.12),
        egg=rng.uniform(0.0, 0.08),
        outline=_angular_table(rng, rng.uniform(0.005, 0.02), 2, 6),
        thickness=_angular_table(rng, 0.25, 2, 8),
        bone_px=rng.uniform(2.4, 3.4) * px,
        scalp_px=rng.uniform(2.0, 3.0) * px,
        fringe_px=rng.uniform(0.8, 1.6) * px,
        jag_px=rng.uniform(0.5, 1.0) * px,
        white=rng.uniform(24, 29),
        grey=rng.uniform(35, 40),
        csf=rng.uniform(2, 12),
        bone=rng.uniform(1100, 1600),
        noise=rng.uniform(7, 10),
        blur=rng.uniform(0.5, 0.7) * px,
        atrophy=atrophy,
        ventricles=(
            front,
            back,
            front + rng.uniform(0.4, 0.6) * (back - front),
            half,
            half * rng.uniform(1.3, 1.8),
            rng.uniform(0.06, 0.14) * grow,
        ),
        sides=1 + rng.uniform(-0.12, 0.12, (2, 3)),
    )


@dataclass(frozen=True)
class _Lesion:
    kind: str
    slices: range
    angle: float  # where on the convexity (epidural, subdural, subarachnoid), radians
    reach: float  # half its angular extent
    thick: float  # pixels (epidural, subdural) or radius (haematoma, tumor)
    where: tuple[float, float]  # centre as fractions of the brain's semi-axes (haematoma, tumor)
    hu: float  # blood's density, or the tumor's contrast to the parenchyma
    mix: float  # subarachnoid: blood's share of the sulcal fluid; intraventricular: how far it layers
    shape: np.ndarray  # angular table: the outline's irregularity
    seed: int

    def taper(self, k: int) -> float:
        """1 in the lesion's middle slice, less towards its ends."""
        middle, half = (self.slices.start + self.slices.stop - 1) / 2, len(self.slices) / 2
        return float(np.sqrt(max(1 - ((k - middle) / (half + 0.5)) ** 2, 0.15)))


def _plan_lesions(
    rng: np.random.Generator, index: int, slices: int, share: float, size: int
) -> list[_Lesion]:
    """The patient's lesions (none, one, or two over disjoint slices); the first one's kind by turn."""
    lesioned = rng.random() < share
    second = rng.random() < 0.3
    if not lesioned:
        return []
    kinds = [KINDS[index % len(KINDS)]]
    if second:
        kinds.append(str(rng.choice([kind for kind in KINDS if kind not in (kinds[0], TUMOR)])))
    lesions: list[_Lesion] = []
    taken: set[int] = set()
    for kind in kinds:
        (low, high), (fewest, most) = _PLACES[kind]
        span = max(1, round(int(rng.integers(fewest, most + 1)) * slices / 20))
        levels = np.arange(slices) / max(slices - 1, 1)
        middles = np.flatnonzero((levels >= low) & (levels <= high))
        middle = int(rng.choice(middles)) if len(middles) else slices // 2
        lowest = max(math.ceil(_LOWEST * (slices - 1)), 1)  # above the skull base's bone and air
        start = min(max(middle - span // 2, lowest), max(slices - 1 - span, lowest))
        chosen = range(start, min(start + span, slices - 1))
        if kind == INTRAVENTRICULAR:
            chosen = range(
                max(chosen.start, math.ceil(_VENTRICLE_LEVELS[0] * (slices - 1)) + 1),
                min(chosen.stop, math.floor(_VENTRICLE_LEVELS[1] * (slices - 1))),
            )
        if not len(chosen) or taken & set(chosen):
            continue
        taken |= set(chosen)
        px = size / 128
        # half the haematomas are small cortical contusions, blood mixed with bruised brain; the others
        # deep (basal ganglia, lobar); tumors lie deep too, brighter or darker than the parenchyma
        contusion = kind == INTRAPARENCHYMAL and rng.random() < 0.5
        side = rng.choice([-1, 1])
        if contusion:
            where, hu = (side * rng.uniform(0.45, 0.6), rng.uniform(-0.6, 0.4)), rng.uniform(48, 62)
        else:
            where, hu = (side * rng.uniform(0.12, 0.5), rng.uniform(-0.45, 0.45)), rng.uniform(58, 78)
        if kind == TUMOR:
            hu = rng.uniform(10, 22) if rng.random() < 0.5 else -rng.uniform(8, 14)
        lesions.append(
            _Lesion(
                kind=kind,
                slices=chosen,
                angle=rng.uniform(-np.pi, np.pi),
                reach={EPIDURAL: rng.uniform(0.3, 0.55), SUBDURAL: rng.uniform(0.7, 1.4)}.get(
                    kind, rng.uniform(0.5, 1.1)
                ),
                thick={
                    EPIDURAL: rng.uniform(2.0, 4.0) * px,
                    SUBDURAL: rng.uniform(2.5, 4.5) * px,
                    INTRAPARENCHYMAL: (rng.uniform(1.5, 3.0) if contusion else rng.uniform(2.5, 5.0)) * px,
                    TUMOR: rng.uniform(3.0, 8.0) * px,
                }.get(kind, 0.0),
                where=where,
                hu=hu,
                mix=rng.uniform(0.3, 0.7) if kind == SUBARACHNOID else rng.uniform(0.0, 0.7),
                shape=_angular_table(rng, rng.uniform(0.05, 0.25), 2, 6),
                seed=int(rng.integers(2**31)),
            )
        )
    return lesions


def _render_level(
    p: _Patient, level: float, rng: np.random.Generator, lesions: list[tuple[_Lesion, float]]
) -> tuple[np.ndarray, np.ndarray | None]:
    """One slice of patient `p` at `level` (0 skull base .. 1 vertex) in HU, with `lesions` (each with its
    taper at this slice) painted in, and their mask (None without lesions). Rendering the same level
    with the same `rng` without lesions gives the same slice without them."""
    n, px = p.size, p.size / 128
    base = 1 - _smoothstep(0.06, 0.32, level)  # skull-base structures
    top = _smoothstep(0.7, 1.0, level)  # the skull cut obliquely
    scale = math.sqrt(max(1 - ((level - 0.4) / 0.67) ** 2, 0.2))
    a, b = p.axes[0] * scale, p.axes[1] * scale
    # Only the head's box (room for the scalp and the blur) is drawn: air beyond.
    reach = max(a * (1 + p.egg), b) * 1.03 + 3.5 * p.scalp_px + 4 * px
    box = (_box(p.centre[0], reach, n), _box(p.centre[1], reach, n))
    y = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None] + 0.5 - p.centre[0]
    x = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :] + 0.5 - p.centre[1]
    shape = (y.shape[0], x.shape[1])
    cos, sin = math.cos(p.turn), math.sin(p.turn)
    u, v = cos * x + sin * y, cos * y - sin * x  # lateral; front (-) to back (+)
    vn = v / b
    un = u / (a * (1 + p.egg * vn))
    r = np.sqrt(un * un + vn * vn)
    theta = np.arctan2(vn, un)  # 0 at the right of the image, -pi/2 in front
    around = _angle_index(theta)
    outline = 1 + p.outline.take(around, mode="clip")
    rh = r / outline
    ray = np.sqrt(u * u + v * v) / np.maximum(r, 1e-6) * outline  # pixels per unit of rh
    outer = (1 - rh) * ray  # pixels inside the skull's outer surface
    frontal = np.exp(-(((theta + np.pi / 2) / 0.35) ** 2)) * _bump(level, 0.2, 0.36)  # frontal sinus
    thickness = (
        p.bone_px
        * (1 + p.thickness.take(around, mode="clip") + 0.3 * np.clip(vn, 0, None))
        * (1 + 0.9 * top + 1.5 * frontal)
    )
    jag = _harmonics(rng, around, p.jag_px * (1 + 1.5 * base + 0.5 * top), 6, 48)
    inside = outer - thickness - jag  # pixels inside the inner table: the brain where > 0
    fringe = np.maximum(
        p.fringe_px * (1 + _harmonics(rng, around, 0.7, 3, 24)) * (1 + 1.5 * top + 0.5 * base), 0.3 * px
    )

    # The brain: grey cortex over white matter, fine texture, then CSF where sulci, fissures, cisterns
    # and the rim under the skull are (fluid: CSF's share of the pixel).
    rim = (0.3 + 1.3 * p.atrophy) * px * (1 - 0.5 * base)
    cortex = inside - rim  # pixels below the cortex' surface
    tissue = (
        p.white
        + (p.grey - p.white) * (1 - _smoothstep(1.2 * px, 3.2 * px, cortex))
        + 1.2 * _smooth_field(rng, shape, 5 * px)
    )
    if base > 0:  # cerebellar folia
        tissue += 2.5 * base * np.clip(vn, 0, None) * _smooth_field(rng, shape, 1.6 * px)
    folds = np.abs(
        _harmonics(rng, _angle_index(theta + 0.05 * _smooth_field(rng, shape, 8 * px)), 1.0, 10, 30)
    )
    reach = (4 + 5 * p.atrophy) * px * (1 + 0.4 * _harmonics(rng, around, 1.0, 4, 12)) * (1 - 0.6 * base)
    opening = 1 - _smoothstep(0, 1, cortex / np.maximum(reach, 0.5))
    sulci = (
        np.clip(1 - folds / ((0.12 + 0.16 * p.atrophy) * opening + 1e-3), 0, 1)
        * (opening > 0)
        * (cortex > -rim)
    )
    fluid = np.maximum(sulci, 1 - _smoothstep(0, rim, inside))
    f, back_, waist, half, gap, spread = p.ventricles
    sylvian = (
        np.exp(-((((v / b) + 0.05) * b / ((0.8 + p.atrophy) * px)) ** 2))
        * _smoothstep(0.45, 0.62, np.abs(un))
        * _bump(level, 0.22, 0.4)
        * 0.6
    )
    cistern = np.exp(-(((np.hypot(u / (0.16 * a), (v - 0.04 * b) / (0.13 * b)) - 1) / 0.28) ** 2)) * _bump(
        level, 0.12, 0.28
    )
    fissure = (
        np.exp(-((u / (0.6 * px)) ** 2))
        * ((vn < f - 0.03) | (vn > back_ + 0.03))
        * (0.4 + 0.4 * p.atrophy)
        * _smoothstep(0.28, 0.4, level)
    )
    fluid = np.maximum.reduce([fluid, sylvian, cistern, fissure])
    content = tissue + (p.csf - tissue) * fluid
    deep = np.exp(-((np.hypot((np.abs(un) - 0.22) / 0.12, (vn + 0.02) / 0.2)) ** 4)) * _bump(
        level, 0.33, 0.54
    )
    content += (p.grey - 2 - content) * deep * (1 - fluid) * 0.5

    ventricles = _ventricle_map(p, level, un, vn, px, a)
    content += (p.csf - content) * ventricles

    masks = []
    for lesion, taper in lesions:
        for weight, value, marked in _paint(
            lesion, taper, u, v, vn, theta, inside, cortex, np.maximum(sulci, sylvian), ventricles, a, b, p
        ):
            content += (value - content) * weight
            if marked is not None:
                masks.append((weight > marked) & (inside > 0))
    based = _skull_base(content, p, level, rng, u, v, inside, a, b, px)
    masks = [mask & (based == content) for mask in masks]  # lesions lie above the skull base: rarely hidden
    content = based

    # The inner table's partial volume, the skull (two tables round the diploe), the scalp, air.
    share = np.clip(1 - np.maximum(inside, 0) / fringe, 0, 1) ** 2  # bone's share of a pixel
    across = np.clip(outer / np.maximum(thickness + jag, 0.5), 0, 1)  # 0 outer table .. 1 inner table
    skull = p.bone * (1 - 0.55 * np.exp(-(((across - 0.5) / 0.22) ** 2)))
    if _bump(level, 0.2, 0.36) > 0:  # the frontal sinus: air cells in the frontal bone
        cells = _smooth_field(rng, shape, 1.5 * px) > -0.3
        skull = np.where((frontal > 0.2) & (across > 0.3) & (across < 0.75) & cells, _HU["air"], skull)
    hu = np.where(inside > 0, content * (1 - share) + p.bone * share, skull)
    # the temporalis muscles, and at the skull base the muscles of the face and neck round the skull
    muscle = np.maximum(_bump(level, 0.2, 0.75) * _smoothstep(0.6, 0.85, np.abs(un)), min(2 * base, 1.0))
    scalp = p.scalp_px * (1 + 2.5 * base)
    soft = np.where(-outer > scalp - 1.2 * px, 35.0, _HU["fat"] * (1 - muscle) + 45 * muscle)
    hu = soft + (hu - soft) * np.clip(outer + 0.5, 0, 1)
    edge = np.clip(outer + scalp + 0.5, 0, 1)  # the skin's partial volume
    hu = _HU["air"] + (hu - _HU["air"]) * edge
    hu = ndimage.gaussian_filter(hu, p.blur)  # the reconstruction kernel
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.6 * px)
    hu += noise * p.noise * (1 + 1.5 * base) * (edge > 0)  # noisier at the skull base
    scan = np.full((n, n), _HU["air"], dtype=np.float32)
    scan[box] = hu
    if not masks:
        return scan, None
    mask = np.zeros((n, n), dtype=bool)
    mask[box] = np.logical_or.reduce(masks)
    return scan, mask


def _bump(level: float, low: float, high: float) -> float:
    """0 outside (low, high), rising smoothly to 1 in the middle: a structure seen over a range of levels."""
    if not low < level < high:
        return 0.0
    return float(math.sin(math.pi * (level - low) / (high - low)) ** 0.5)


def _ventricle_map(
    p: _Patient, level: float, un: np.ndarray, vn: np.ndarray, px: float, a: float
) -> np.ndarray:
    """CSF's share of each pixel in the ventricles cut at `level`: the lateral ventricles' bodies (two
    crescents, ')(' seen from above), the third ventricle, the temporal horns, the fourth ventricle."""
    front, back, waist, half, gap, spread = p.ventricles
    size = _bump(level, *_VENTRICLE_LEVELS) ** 0.7
    found = np.zeros(un.shape, dtype=np.float32)
    if size > 0:
        t = np.clip((vn - waist) / np.where(vn < waist, waist - front, back - waist), -1, 1)
        taper = np.clip(1 - t * t, 0, None) ** 0.35 * (
            1 + 0.6 * np.clip(-t, 0, None) - 0.3 * np.clip(t, 0, None)
        )
        width = (vn > front * size) & (vn < back * size)
        for side, (g, s, h) in zip((-1, 1), p.sides, strict=True):
            distance = np.abs(side * un - gap * g - spread * s * t * t) - half * h * taper * size
            found = np.maximum(found, np.clip(0.5 - distance * a / px, 0, 1) * width)
    pix = px / a
    third = (
        _bump(level, 0.32, 0.44)
        * np.clip(0.5 - (np.abs(un) - 0.6 * pix) / pix, 0, 1)
        * (np.abs(vn - 0.02) < 0.12)
    )
    temporal = _bump(level, 0.2, 0.34) * np.clip(
        1.5 - np.hypot((np.abs(un) - 0.55) / 0.06, vn / 0.1) * 1.5, 0, 1
    )
    fourth = _bump(level, 0.07, 0.22) * np.clip(1.5 - np.hypot(un / 0.06, (vn - 0.38) / 0.05) * 1.5, 0, 1)
    return np.maximum.reduce([found, third, temporal, fourth])


def _paint(
    lesion: _Lesion,
    taper: float,
    u: np.ndarray,
    v: np.ndarray,
    vn: np.ndarray,
    theta: np.ndarray,
    inside: np.ndarray,
    cortex: np.ndarray,
    fluid: np.ndarray,
    ventricles: np.ndarray,
    a: float,
    b: float,
    p: _Patient,
) -> list[tuple[np.ndarray, np.ndarray | float, float | None]]:
    """A lesion at this slice as layers painted in turn: (share of each pixel 0..1, density in HU, the
    share above which the mask marks the pixel, or None: an oedema halo is painted but not marked).
    `fluid`: the sulci's and fissures' CSF share (subarachnoid blood lies there, partial-volumed with
    CSF and brain: marked where it is a fifth of the pixel)."""
    px = p.size / 128
    grain = _smooth_field(np.random.default_rng(lesion.seed), u.shape, 2.0 * px)
    blood = lesion.hu + 3 * grain
    off = np.abs(np.angle(np.exp(1j * (theta - lesion.angle)))) / lesion.reach  # 0 .. 1 across its extent
    if lesion.kind == EPIDURAL:  # lentiform: thickest in its middle, ends sharp against the bone
        thick = lesion.thick * taper * np.sqrt(np.clip(1 - off * off, 0, 1))
        return [(np.clip(thick - inside + 0.5, 0, 1) * (thick > 0.3), blood, 0.5)]
    if lesion.kind == SUBDURAL:  # crescent: even thickness, tapering at its ends
        thick = lesion.thick * (0.6 + 0.4 * taper) * np.clip(3 * (1 - off), 0, 1)
        return [(np.clip(thick - inside + 0.5, 0, 1) * (thick > 0.3), blood, 0.5)]
    if lesion.kind == SUBARACHNOID:  # in the sulci and the CSF under the skull, mixed with CSF
        where = fluid * np.clip(3 * (1 - off), 0, 1) * (inside > px) * (cortex < 10 * px) * (ventricles < 0.5)
        return [(where, p.csf + lesion.mix * (blood - p.csf), 0.2)]
    if lesion.kind == INTRAVENTRICULAR:  # layering at the back of the ventricles (the patient lies supine)
        waist, back = p.ventricles[2], p.ventricles[1]
        layer = _smoothstep(-0.02, 0.02, vn - (waist + (lesion.mix - 0.35) * (back - waist)))
        return [(ventricles * layer, blood, 0.5)]
    # a haematoma or a tumor: an irregular blob in the parenchyma, with an oedema rim or halo
    du, dv = u - lesion.where[0] * a, v - lesion.where[1] * b
    radius = lesion.thick * taper * (1 + lesion.shape.take(_angle_index(np.arctan2(dv, du)), mode="clip"))
    distance = np.sqrt(du * du + dv * dv)
    core = np.clip(radius - distance + 0.5, 0, 1) * (inside > 2)
    halo = (0.5 if lesion.kind == INTRAPARENCHYMAL else 0.6 + 0.6 * lesion.mix) * lesion.thick
    oedema = np.exp(-((np.maximum(distance - radius, 0) / max(halo, 0.5)) ** 2)) * (inside > 1) * 0.8
    if lesion.kind == TUMOR:
        return [(oedema, p.white - 10, None), (core, p.white + 3 + lesion.hu + 2 * grain, 0.5)]
    return [(oedema, p.white - 7, None), (core, blood, 0.5)]


def _skull_base(
    content: np.ndarray,
    p: _Patient,
    level: float,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    inside: np.ndarray,
    a: float,
    b: float,
    px: float,
) -> np.ndarray:
    """The skull base's bone and air over the brain: petrous ridges, mastoid air cells, sphenoid and
    ethmoid sinuses, orbits, clivus, sphenoid wings, bone islands, beam-hardening streaks."""
    if level >= 0.34:
        return content
    bone = p.bone
    out = content
    cells = _smooth_field(rng, u.shape, 1.3 * px)
    # air cells (mastoid, ethmoid): air in the cells, thin bony septa round them, soft tissue between
    air_cells = np.where(np.abs(cells) < 0.2, 0.5 * bone, np.where(cells > 0, _HU["air"], 40.0))

    def segment(u0: float, v0: float, u1: float, v1: float) -> np.ndarray:
        du, dv = u1 - u0, v1 - v0
        t = np.clip(((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv), 0, 1)
        return np.hypot(u - u0 - t * du, v - v0 - t * dv)

    def ellipse(cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
        return np.hypot((u - cu) / max(ru, 1e-3), (v - cv) / max(rv, 1e-3))

    streak = _bump(level, -0.15, 0.26)
    if streak:  # beam hardening: dark (and some bright) bands between the petrous bones
        for angle, depth in zip(rng.uniform(-0.7, 0.7, 8), rng.uniform(-40, 20, 8), strict=True):
            distance = np.abs(np.cos(angle) * (v - rng.uniform(0, 0.3) * b) - np.sin(angle) * u)
            out = out + depth * streak * np.exp(-((distance / (0.8 * px)) ** 2)) * (np.abs(u) < 0.75 * a)
    maxillary = _bump(level, -0.3, 0.16)
    if maxillary:  # the maxillary sinuses and the nasal cavity, air among thin bone
        for side in (-1, 1):
            m = ellipse(side * 0.3 * a, -0.55 * b, 0.12 * a * maxillary, 0.14 * b * maxillary)
            out = np.where(m < 1, np.where(m > 0.88, 0.6 * bone, _HU["air"]), out)
        nose = ellipse(0, -0.72 * b, 0.08 * a * maxillary, 0.14 * b)
        out = np.where(nose < 1, np.where(cells > -0.2, _HU["air"], 40.0), out)
    for side in (-1, 1):
        petrous = _bump(level, -0.08, 0.27)
        if petrous:
            width = (0.7 + 1.0 * petrous) * px * (1 + 0.4 * cells)
            d = segment(side * 0.8 * a, 0.28 * b, side * 0.14 * a, -0.06 * b)
            out = np.where(
                d < width,
                bone * (0.9 + 0.1 * cells),
                out + (bone - out) * np.clip(width + 0.7 - d, 0, 1) * 0.5,
            )
            mastoid = ellipse(side * 0.78 * a, 0.42 * b, 0.17 * a * petrous, 0.2 * b * petrous)
            out = np.where(mastoid < 1, air_cells, out)
        orbit = _bump(level, 0.08, 0.3)
        if orbit:
            o = ellipse(side * 0.4 * a, -0.7 * b, 0.16 * a, 0.14 * b)
            globe = ellipse(side * 0.42 * a, -0.78 * b, 0.12 * a * orbit, 0.1 * b * orbit)
            out = np.where(o < 1, np.where(globe < 1, 12.0, _HU["fat"]), np.where(o < 1.15, 0.7 * bone, out))
            nerve = segment(side * 0.4 * a, -0.66 * b, side * 0.12 * a, -0.42 * b)
            out = np.where((nerve < 0.9 * px) & (o < 1.4), 35.0, out)
        wing = _bump(level, 0.18, 0.34)
        if wing:
            d = segment(side * 0.75 * a, -0.28 * b, side * 0.12 * a, -0.36 * b)
            out = np.where(d < (0.5 + 0.8 * wing) * px, 0.8 * bone, out)
    sinus = _bump(level, -0.05, 0.26)
    if sinus:
        s = ellipse(0, -0.24 * b, 0.16 * a * sinus, 0.12 * b * sinus)
        out = np.where(s < 1, np.where((np.abs(u) < 0.6 * px) | (s > 0.85), 0.8 * bone, _HU["air"]), out)
    ethmoid = _bump(level, 0.06, 0.3)
    if ethmoid:
        e = ellipse(0, -0.6 * b, 0.1 * a * ethmoid, 0.2 * b)
        out = np.where(e < 1, air_cells, out)
    clivus = _bump(level, -0.1, 0.2)
    if clivus:
        c = ellipse(0, 0.02 * b, 0.06 * a * clivus, 0.11 * b * clivus)
        out = np.where(c < 1, np.where(c < 0.6, 0.35 * bone, bone), out)
    islands = int(rng.integers(4, 13) * (1 - _smoothstep(0.2, 0.34, level)))
    for cu, cv, radius in zip(
        rng.uniform(-0.7, 0.7, islands),
        rng.uniform(-0.6, 0.5, islands),
        rng.uniform(0.5, 1.2, islands) * px,
        strict=True,
    ):
        out = np.where(ellipse(cu * a, cv * b, radius, radius) < 1, bone * 0.9, out)
    return np.where(inside > 0, out, content)


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
    """A smooth random periodic function of the angle (harmonics low..high), peaking at +-amplitude,
    looked up at `_angle_index(angle)` in a table drawn by `_angular_table`."""
    return _angular_table(rng, amplitude, low, high).take(index, mode="clip")


def _angular_table(rng: np.random.Generator, amplitude: float, low: int, high: int) -> np.ndarray:
    """`_harmonics`' table: one inverse FFT, far cheaper than a cosine per harmonic per pixel; kept, it
    gives the same function at every level of a phantom scan."""
    orders = np.arange(low, high + 1)
    spectrum = np.zeros(_TABLE // 2 + 1, dtype=complex)
    spectrum[orders] = rng.uniform(-1, 1, orders.size) / orders * np.exp(2j * np.pi * rng.random(orders.size))
    table = np.fft.irfft(spectrum, _TABLE)
    return np.tile(table * (amplitude / np.abs(table).max()), 2).astype(np.float32)  # covers [-2pi, 2pi)


def _smoothstep(low: float, high: float, x: np.ndarray) -> np.ndarray:
    """0 below `low`, 1 above `high`, a smooth cubic ramp between."""
    t = np.clip((x - low) / (high - low), 0, 1)
    return t * t * (3 - 2 * t)
