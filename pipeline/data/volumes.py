"""CT volumes (NIfTI files) as stacks of axial slices in Hounsfield units, read slab by slab, and back.

A volume is reoriented to the closest canonical (RAS+) axes, so that its third axis runs from the feet
to the top of the head whatever the file's own orientation, and each axial slice is shown as a
radiologist reads it: anterior at the top, the patient's right on the image's left. `Volume.put_slices`
inverts both, so a map computed on the slices lands on the file's own voxel grid and affine.

`open_volume` reads the header alone (NIfTI-1 or NIfTI-2) and refuses, before any voxel is read, what
cannot be a CT volume or would cost more memory than `Limits` allows (a few kilobytes of gzip can claim
gigabytes); the voxels are then read a slab of axial slices at a time, in the file's own order, so
memory stays that of a slab whatever the volume's size.
"""

from __future__ import annotations

import gzip
import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy

from pipeline.core.errors import ImageDecodeError, describe
from pipeline.core.io import make_folders
from pipeline.data.guards import DEFAULT_LIMITS, Limits

SUFFIXES = (".nii.gz", ".nii")
MASK_SUFFIX = "_mask"  # <case>_mask.nii.gz beside <case>.nii.gz
MASKS_FOLDER = "masks"  # or masks/<case>.nii.gz under the dataset's root
SLAB_VOXELS = 32 * 512 * 512  # voxels read at a time: a few dozen axial slices of a usual CT
GZIP_MAGIC = b"\x1f\x8b"
VOXEL_KINDS = "iuf"  # integers and floats: what a CT volume holds (not complex, RGB, ...)


def is_volume(path: Path | str) -> bool:
    return str(path).lower().endswith(SUFFIXES)


def is_mask(relative: Path) -> bool:
    """A lesion mask by the dataset layouts' names: `<case>_mask.nii.gz`, or a volume under `masks/`."""
    return is_volume(relative) and (
        case_name(relative).endswith(MASK_SUFFIX)
        or MASKS_FOLDER in (part.lower() for part in relative.parts[:-1])
    )


def case_name(path: Path | str) -> str:
    """`brain_01.nii.gz` -> `brain_01`."""
    name = Path(path).name
    return next(name[: -len(suffix)] for suffix in SUFFIXES if name.lower().endswith(suffix))


class _Exact(io.IOBase):
    """A file whose short read is an error: the file ends before the voxels its header declares (a
    truncated `.nii.gz`, whose length is only known once decompressed)."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__()
        self._file = file

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        if 0 <= size != len(data):
            raise EOFError("truncated: the file ends before its voxel data does")
        return data

    def close(self) -> None:
        self._file.close()
        super().close()


def _display(canonical: np.ndarray) -> np.ndarray:
    """RAS+ (x, y, k) planes -> (k, rows, columns) slices: anterior up, the patient's right on the left."""
    return canonical[::-1, ::-1, :].transpose(2, 1, 0)


def _undisplay(slices: np.ndarray) -> np.ndarray:
    return slices.transpose(2, 1, 0)[::-1, ::-1, :]


@dataclass(frozen=True, eq=False)
class Volume:
    """An open NIfTI volume whose header passed `open_volume`'s checks; its voxels are read by `read`,
    a slab of axial slices at a time. Close it (or use it in a `with` block) to close its file."""

    path: Path
    affine: np.ndarray  # the file's own 4x4 voxel-to-world (RAS mm) matrix
    shape: tuple[int, int, int]  # the file's own voxel grid
    orientation: np.ndarray  # nibabel orientation of the file's axes relative to RAS+
    slope: float  # HU = stored value * slope + inter
    inter: float
    voxels: ArrayProxy = field(repr=False)  # the file's stored values, read a slab at a time
    file: _Exact = field(repr=False)

    @property
    def superior(self) -> int:
        """The file's axis that runs along the feet-head (superior) axis."""
        return int(np.flatnonzero(self.orientation[:, 0] == 2)[0])

    @property
    def count(self) -> int:
        """Axial slices."""
        return self.shape[self.superior]

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(rows, columns) of an axial slice as displayed: the file's anterior and right-left axes."""
        axes = {int(target): size for target, size in zip(self.orientation[:, 0], self.shape, strict=True)}
        return axes[1], axes[0]

    def _flipped(self) -> bool:
        return bool(self.orientation[self.superior, 1] < 0)

    def _file_slab(self, start: int, stop: int) -> tuple[slice, ...]:
        """The file's voxels of displayed slices [start, stop)."""
        if self._flipped():
            start, stop = self.count - stop, self.count - start
        return tuple(slice(start, stop) if axis == self.superior else slice(None) for axis in range(3))

    def slabs(self, most: int | None = None) -> Iterator[tuple[int, int]]:
        """[start, stop) ranges of displayed slices covering the volume, each of at most `most` slices
        and `SLAB_VOXELS` voxels (one slice at least), in the file's own order: a `.nii.gz` is then
        decompressed once, not once per slab (its feet-head axis may run backwards: descending ranges)."""
        rows, columns = self.slice_shape
        size = max(1, min(most or self.count, SLAB_VOXELS // (rows * columns)))
        starts = range(0, self.count, size)
        for start in reversed(starts) if self._flipped() else starts:
            yield start, min(start + size, self.count)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Displayed slices [start, stop) as (stop - start, rows, columns) float32 HU, inferior to
        superior (the file's scaling applied; non-finite values are left for the caller to judge)."""
        if not 0 <= start < stop <= self.count:
            raise ValueError(f"slices {start}..{stop - 1} are outside the volume's {self.count}")
        try:
            raw = self.voxels[self._file_slab(start, stop)]
        except Exception as err:  # noqa: BLE001 -- EOFError, zlib.error, BadGzipFile, OSError from the file
            raise ImageDecodeError(
                self.path, f"cannot read NIfTI (slices {start}..{stop - 1}): {describe(err)}"
            ) from None
        with np.errstate(all="ignore"):  # a hostile scaling may overflow: inf, judged by the caller
            slices = np.ascontiguousarray(
                _display(nib.orientations.apply_orientation(raw, self.orientation)), dtype=np.float32
            )
            if self.slope != 1:
                slices *= np.float32(self.slope)
            if self.inter:
                slices += np.float32(self.inter)
        return slices

    def put_slices(self, grid: np.ndarray, start: int, slices: np.ndarray) -> None:
        """Write (k, rows, columns) maps of displayed slices [start, start + k) into `grid`, an array of
        the file's own shape, where those slices' voxels are: a volume's maps are placed slab by slab."""
        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), self.orientation)
        file_slab = nib.orientations.apply_orientation(_undisplay(slices), back)
        grid[self._file_slab(start, start + len(slices))] = file_slab

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open(path: Path) -> IO[bytes]:
    """The file, decompressed as it is read if it is gzip (by its first bytes, whatever its name)."""
    file = open(path, "rb")  # noqa: SIM115 -- the volume owns it until closed
    if file.read(len(GZIP_MAGIC)) == GZIP_MAGIC:
        file.close()
        return gzip.open(path, "rb")
    file.seek(0)
    return file


def _read_header(path: Path, file: IO[bytes]) -> nib.Nifti1Header:
    """The NIfTI-1 or NIfTI-2 header of a single file (header and voxels together); its extensions
    are not read (they may claim any size)."""
    try:
        raw = file.read(nib.Nifti2Header.sizeof_hdr)
        klass = nib.Nifti2Header if nib.Nifti2Header.may_contain_header(raw) else nib.Nifti1Header
        if len(raw) < klass.sizeof_hdr:
            raise ImageDecodeError(
                path, f"cannot read NIfTI: truncated header ({len(raw)} bytes; a NIfTI header has 348)"
            )
        header = klass(raw[: klass.sizeof_hdr], check=True)
    except ImageDecodeError:
        raise
    except Exception as err:  # noqa: BLE001 -- nibabel raises HeaderDataError, ValueError; gzip, OSError
        raise ImageDecodeError(path, f"cannot read NIfTI: {describe(err)}") from None
    if header["magic"].item() != header.single_magic:
        raise ImageDecodeError(
            path,
            f"cannot read NIfTI: a header-only file (magic {header['magic'].item().decode('latin-1')}): its "
            "voxels are in a separate .img file",
        )
    return header


def _header_facts(
    path: Path, header: nib.Nifti1Header
) -> tuple[tuple[int, ...], np.dtype, int, float, float]:
    """The header's data shape, voxel type, voxel data offset, scale slope and intercept."""
    if not math.isfinite(header["vox_offset"]):
        raise ImageDecodeError(
            path, f"cannot read NIfTI: its voxel data offset (vox_offset) is {header['vox_offset']}"
        )
    try:
        shape = tuple(int(size) for size in header.get_data_shape())
        dtype = header.get_data_dtype()
        offset = max(header.get_data_offset(), header.single_vox_offset)  # 0: right after the header
        slope, inter = header.get_slope_inter()
    except Exception as err:  # noqa: BLE001 -- HeaderDataError, ValueError, OverflowError
        raise ImageDecodeError(path, f"cannot read NIfTI: {describe(err)}") from None
    return shape, dtype, offset, 1.0 if slope is None else slope, 0.0 if inter is None else inter


def _orientation(path: Path, header: nib.Nifti1Header) -> tuple[np.ndarray, np.ndarray]:
    """The affine nibabel uses (sform, else qform, else pixdim) and its orientation, refused when not
    finite or singular: such a volume has no feet-head axis to slice along."""
    source = "sform" if header["sform_code"] else "qform" if header["qform_code"] else "pixdim"
    try:
        affine = header.get_best_affine()
    except Exception as err:  # noqa: BLE001 -- HeaderDataError, ValueError of an invalid quaternion
        raise ImageDecodeError(path, f"invalid {source} affine: {describe(err)}") from None
    matrix = np.round(affine[:3], 4).tolist()
    if not np.isfinite(affine).all():
        raise ImageDecodeError(path, f"its {source} affine (voxel to world) is not finite: {matrix}")
    with np.errstate(all="ignore"):  # voxel sizes beyond float range: no direction, singular below
        directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)  # as io_orientation sees it
        rank = np.linalg.matrix_rank(directions) if np.isfinite(directions).all() else 0
    if rank < 3:
        raise ImageDecodeError(
            path,
            f"its {source} affine (voxel to world) is singular: its axes do not span 3-D space: {matrix}",
        )
    orientation = nib.orientations.io_orientation(affine)
    return affine, orientation


def _check_size(path: Path, shape: tuple[int, ...], volume: Volume, limits: Limits) -> None:
    """Refuse a volume whose axial slices or voxels, as its header declares them, exceed `limits`."""
    rows, columns = volume.slice_shape
    if rows * columns > limits.max_pixels:
        raise ImageDecodeError(
            path,
            f"{columns}x{rows} pixels per slice is above preprocess.max_pixels ({limits.max_pixels})",
        )
    if math.prod(shape) > limits.max_voxels:
        raise ImageDecodeError(
            path,
            f"{'x'.join(map(str, shape))} voxels is above preprocess.max_voxels ({limits.max_voxels})",
        )


def open_volume(path: Path, limits: Limits = DEFAULT_LIMITS) -> Volume:
    """Open a NIfTI volume from its header alone; raise ImageDecodeError naming the file, before any
    voxel is read, when it is not a non-empty 3-D volume of integers or floats (a 4-D file whose extra
    dimensions are all 1 is read as 3-D), its affine is not finite or singular, its slices or voxels
    exceed `limits`, or an uncompressed file is shorter than its header declares."""
    try:
        file = _open(path)
    except OSError as err:
        raise ImageDecodeError(path, f"cannot read NIfTI: {describe(err)}") from None
    try:
        return _checked(path, file, limits)
    except BaseException:
        file.close()
        raise


def _checked(path: Path, file: IO[bytes], limits: Limits) -> Volume:
    header = _read_header(path, file)
    declared, dtype, offset, slope, inter = _header_facts(path, header)
    shape = declared
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ImageDecodeError(path, f"expected a 3-D volume, got shape {declared}")
    if min(shape) <= 0:
        raise ImageDecodeError(path, f"expected a non-empty 3-D volume, got shape {declared}")
    if dtype.kind not in VOXEL_KINDS or dtype.itemsize > 8:
        raise ImageDecodeError(
            path,
            f"unsupported voxel data type {header.get_value_label('datatype')} (NIfTI datatype "
            f"{int(header['datatype'])}): a CT volume holds integers or floating-point numbers",
        )
    affine, orientation = _orientation(path, header)
    exact = _Exact(file)
    voxels = ArrayProxy(exact, (shape, dtype, offset), mmap=False)
    volume = Volume(Path(path), affine, shape, orientation, slope, inter, voxels, exact)
    _check_size(path, shape, volume, limits)
    if not isinstance(file, gzip.GzipFile):
        size, needed = os.fstat(file.fileno()).st_size, offset + math.prod(shape) * dtype.itemsize
        if size < needed:
            raise ImageDecodeError(
                path,
                f"truncated: {size} bytes, but its header declares {needed} ({'x'.join(map(str, shape))} "
                f"{dtype.name} voxels from byte {offset})",
            )
    return volume


def read_mask(path: Path, volume: Volume, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """A mask volume (any non-zero voxel is the finding) as (n, rows, columns) booleans aligned with
    `volume`'s slices; a mask on another grid is an error, not a silent misalignment."""
    with open_volume(path, limits) as mask:
        if mask.shape != volume.shape or not np.allclose(mask.affine, volume.affine, atol=1e-3):
            raise ImageDecodeError(
                path, f"mask grid {mask.shape} (or its affine) differs from its image's {volume.shape}"
            )
        aligned = replace(mask, orientation=volume.orientation)  # displayed exactly as its image
        found = np.empty((aligned.count, *aligned.slice_shape), dtype=bool)
        for start, stop in aligned.slabs():
            found[start:stop] = aligned.read(start, stop) != 0
    return found


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write `data` (on a scan's voxel grid) as NIfTI with the scan's affine, so viewers overlay it."""
    make_folders(path.parent)
    nib.save(nib.Nifti1Image(data, affine), path)
