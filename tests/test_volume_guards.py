"""A NIfTI file that cannot be a CT volume, or would cost more memory than the limits allow, is refused
from its header alone, before any voxel is read, with a reason naming the file; one whose voxels break
while they are read is an ImageDecodeError too; any header at all opens and reads within small limits
or is refused, never another exception, never a large allocation."""

from __future__ import annotations

import gzip
import math
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nibabel.arrayproxy import ArrayProxy

from pipeline.core.errors import ImageDecodeError
from pipeline.data import volumes
from pipeline.data.guards import Limits
from pipeline.data.slicing import slice_scans
from pipeline.data.volumes import Volume, open_volume, read_mask, save_nifti
from tests.volume_factory import head_volume, write_volume

EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL = Limits(max_pixels=64 * 64, max_voxels=64 * 64 * 8)


def _header(
    shape: tuple[int, ...], dtype: type = np.int16, affine: np.ndarray | None = None
) -> nib.Nifti1Header:
    """A single-file NIfTI-1 header claiming `shape` of `dtype`, with `affine` as its sform (and no qform)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4) if affine is None else affine, code=1)
    header["vox_offset"] = 352
    return header


def _write(path: Path, header: nib.Nifti1Header, voxels: bytes = b"") -> Path:
    """The header, no extensions and `voxels` (however few the header claims), gzipped for `.gz`."""
    content = header.binaryblock + b"\x00" * 4 + voxels
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
    return path


@pytest.fixture
def no_voxel_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("a voxel was read")

    monkeypatch.setattr(ArrayProxy, "__getitem__", refuse)


def _refusal(path: Path, limits: Limits = volumes.DEFAULT_LIMITS) -> str:
    with pytest.raises(ImageDecodeError) as caught:
        open_volume(path, limits)
    assert caught.value.path == path and str(caught.value).startswith(f"{path}: ")
    return caught.value.reason


@pytest.mark.usefixtures("no_voxel_read")
@pytest.mark.parametrize(
    ("shape", "dtype", "reason"),
    [
        ((2048, 2048, 300), np.uint8, "2048x2048x300 voxels is above preprocess.max_voxels (134217728)"),
        ((6000, 6000, 2), np.int16, "6000x6000 pixels per slice is above preprocess.max_pixels (16777216)"),
        ((30000, 30000, 500), np.int16, "30000x30000 pixels per slice is above preprocess.max_pixels"),
        ((2048, 2048, 300, 20), np.int16, "expected a 3-D volume, got shape (2048, 2048, 300, 20)"),
        ((64, 64), np.int16, "expected a 3-D volume, got shape (64, 64)"),
        ((64, 0, 30), np.int16, "expected a non-empty 3-D volume, got shape (64, 0, 30)"),
        ((8, 8, 8), np.complex64, "unsupported voxel data type complex64 (NIfTI datatype 32)"),
        ((8, 8, 8), np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]), "unsupported voxel data type RGB"),
    ],
)
def test_a_header_is_refused_before_any_voxel_is_read(
    shape: tuple[int, ...], dtype: type, reason: str, tmp_path: Path
) -> None:
    """A few dozen bytes of header claiming gigabytes (or what is no CT volume) cost nothing."""
    path = _write(tmp_path / "claim.nii.gz", _header(shape, dtype))
    assert path.stat().st_size < 100
    assert _refusal(path).startswith(reason)


def test_a_header_with_a_negative_dimension_or_no_voxel_offset_is_refused(tmp_path: Path) -> None:
    header = _header((8, 8, 8))
    header["dim"][2] = -8
    assert _refusal(_write(tmp_path / "negative.nii", header)).startswith("expected a non-empty 3-D volume")
    header = _header((8, 8, 8))
    header["vox_offset"] = np.nan
    assert _refusal(_write(tmp_path / "offset.nii", header)) == (
        "cannot read NIfTI: its voxel data offset (vox_offset) is nan"
    )


def test_the_voxel_limit_counts_the_whole_volume(tmp_path: Path) -> None:
    path = write_volume(tmp_path / "scan.nii.gz", head_volume(size=32, slices=9))
    limit = Limits(max_pixels=32 * 32, max_voxels=32 * 32 * 8)
    assert _refusal(path, limit) == "32x32x9 voxels is above preprocess.max_voxels (8192)"
    with open_volume(path, Limits(max_pixels=32 * 32, max_voxels=32 * 32 * 9)) as volume:
        assert volume.count == 9


def test_a_4d_file_with_one_volume_is_read_as_3d(tmp_path: Path) -> None:
    data = head_volume(size=16, slices=3)
    path = write_volume(tmp_path / "one.nii.gz", data[..., None])
    with open_volume(path) as volume:
        assert volume.shape == (16, 16, 3)
        np.testing.assert_array_equal(volume.read(0, 3)[1], data[::-1, ::-1, 1].T)


@pytest.mark.usefixtures("no_voxel_read")
@pytest.mark.parametrize(
    ("affine", "reason"),
    [
        (np.full((4, 4), np.nan), "its sform affine (voxel to world) is not finite"),
        (np.diag([1.0, np.inf, 1.0, 1.0]), "its sform affine (voxel to world) is not finite"),
        (np.diag([1.0, 1.0, 0.0, 1.0]), "its sform affine (voxel to world) is singular"),
        (np.array([[1.0, 2, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "its sform affine"),
    ],
)
def test_an_affine_that_is_not_finite_or_singular_is_refused(
    affine: np.ndarray, reason: str, tmp_path: Path
) -> None:
    """Such a volume has no feet-head axis to slice along."""
    assert _refusal(_write(tmp_path / "bad.nii", _header((4, 4, 4), affine=affine))).startswith(reason)


def test_without_an_sform_the_qform_or_pixdim_affine_is_checked(tmp_path: Path) -> None:
    header = _header((4, 4, 4))
    header["sform_code"] = 0
    header["pixdim"][1:4] = [1.0, np.nan, 1.0]
    assert "its pixdim affine (voxel to world) is not finite" in _refusal(_write(tmp_path / "p.nii", header))
    header["qform_code"] = 1
    assert "qform affine" in _refusal(_write(tmp_path / "q.nii", header))


def test_an_uncompressed_file_shorter_than_its_header_declares_is_refused(tmp_path: Path) -> None:
    path = write_volume(tmp_path / "scan.nii", head_volume(size=16, slices=4))
    path.write_bytes(path.read_bytes()[:-100])
    assert _refusal(path) == (
        f"truncated: {352 + 16 * 16 * 4 * 4 - 100} bytes, but its header declares {352 + 16 * 16 * 4 * 4} "
        "(16x16x4 float32 voxels from byte 352)"
    )


def test_a_truncated_gzip_volume_fails_where_its_voxels_end(tmp_path: Path) -> None:
    path = write_volume(tmp_path / "scan.nii.gz", np.random.default_rng(0).normal(size=(32, 32, 8)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with open_volume(path) as volume:
        with pytest.raises(ImageDecodeError, match=r"scan.nii.gz: cannot read NIfTI \(slices \d+\.\.\d+\): "):
            for start, stop in volume.slabs(1):
                volume.read(start, stop)
        assert start > 0  # the slices before the cut were read


def test_a_header_that_is_no_nifti_or_a_pair_header_is_refused(tmp_path: Path) -> None:
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(b"\x00" * 100))
    assert _refusal(tmp_path / "short.nii.gz").startswith("cannot read NIfTI: truncated header (100 bytes")
    (tmp_path / "text.nii").write_bytes(b"not a volume " * 50)
    assert _refusal(tmp_path / "text.nii").startswith("cannot read NIfTI: ")
    pair = _header((4, 4, 4))
    pair["magic"] = b"ni1"
    assert "separate .img file" in _refusal(_write(tmp_path / "pair.nii", pair, bytes(128)))


def test_an_error_without_a_message_is_named_by_its_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_volume(tmp_path / "scan.nii.gz", head_volume(size=16, slices=4))

    def fail(*_: object) -> None:
        raise EOFError

    monkeypatch.setattr(ArrayProxy, "__getitem__", fail)
    with open_volume(path) as volume, pytest.raises(ImageDecodeError) as caught:
        volume.read(0, 4)
    assert caught.value.reason == "cannot read NIfTI (slices 0..3): EOFError"


def test_a_gzipped_file_is_read_whatever_its_name_and_nifti2_too(tmp_path: Path) -> None:
    data = head_volume(size=16, slices=4)
    misnamed = tmp_path / "scan.nii"
    misnamed.write_bytes(write_volume(tmp_path / "scan.nii.gz", data).read_bytes())
    nib.save(nib.Nifti2Image(data, np.eye(4)), tmp_path / "two.nii")
    for path in (misnamed, tmp_path / "two.nii"):
        with open_volume(path) as volume:
            np.testing.assert_array_equal(volume.read(0, 4)[2], data[::-1, ::-1, 2].T)


@pytest.mark.usefixtures("no_voxel_read")
def test_a_mask_is_refused_by_its_header_as_its_image(tmp_path: Path) -> None:
    image = write_volume(tmp_path / "scan.nii.gz", head_volume(size=16, slices=4))
    mask = _write(tmp_path / "scan_mask.nii.gz", _header((2048, 2048, 300), np.uint8))
    with open_volume(image) as volume, pytest.raises(ImageDecodeError, match="above preprocess.max_pixels"):
        read_mask(mask, volume, Limits(max_pixels=1024 * 1024))


def test_a_map_grid_is_saved_with_the_files_affine_without_a_copy_of_it(tmp_path: Path) -> None:
    affine = np.diag([-0.8, 0.8, -3.0, 1.0])
    grid = np.full((128, 128, 32), np.nan, dtype=np.float32)
    grid[..., 3] = 0.5
    tracemalloc.start()
    try:
        save_nifti(grid, affine, tmp_path / "map.nii.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < grid.nbytes / 4
    written = nib.load(tmp_path / "map.nii.gz")
    assert np.allclose(written.affine, affine) and written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(written.dataobj), grid)


def test_download_rejects_each_bad_volume_with_its_reason_and_slices_the_others(tmp_path: Path) -> None:
    """A singular affine, NaN voxels, a header claiming too much: each one reject among good scans; a
    volume with non-finite voxels leaves nothing of it behind, even slabs written before they were found."""
    root = tmp_path / "in" / "Healthy"
    write_volume(root / "good.nii.gz", head_volume())
    _write(
        root / "flat.nii.gz", _header((48, 48, 8), np.float32, np.diag([1.0, 0.0, 1.0, 1.0])), bytes(73728)
    )
    nan = head_volume()
    nan[5, 5, 6] = np.nan
    nan[:2, 0, 7] = np.inf
    write_volume(root / "nan.nii.gz", nan)
    _write(root / "claim.nii.gz", _header((2048, 2048, 300, 20)))
    rejects = dict(slice_scans(tmp_path / "in", tmp_path / "raw", limits=SMALL))
    assert set(rejects) == {"Healthy/flat.nii.gz", "Healthy/nan.nii.gz", "Healthy/claim.nii.gz"}
    assert rejects["Healthy/flat.nii.gz"].startswith("its sform affine (voxel to world) is singular")
    assert rejects["Healthy/nan.nii.gz"] == (
        "3 non-finite voxel values (NaN or infinite) in slices 6..7: training scans must be finite"
    )
    assert rejects["Healthy/claim.nii.gz"] == "expected a 3-D volume, got shape (2048, 2048, 300, 20)"
    written = sorted(path.name for path in (tmp_path / "raw").rglob("*.dcm"))
    assert written == [f"good_z{index:03d}.dcm" for index in range(8)]


def test_a_volume_rejected_in_a_later_slab_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(volumes, "SLAB_VOXELS", 48 * 48 * 2)
    data = head_volume()
    data[10, 10, 5] = np.nan
    write_volume(tmp_path / "in" / "Healthy" / "scan.nii.gz", data)
    good = write_volume(
        tmp_path / "in" / "Healthy" / "cut.nii.gz", np.random.default_rng(0).normal(size=(48, 48, 8))
    )
    good.write_bytes(good.read_bytes()[: good.stat().st_size * 3 // 4])
    rejects = dict(slice_scans(tmp_path / "in", tmp_path / "raw"))
    assert rejects["Healthy/scan.nii.gz"].startswith("1 non-finite voxel value (NaN or infinite) in slice 5:")
    assert rejects["Healthy/cut.nii.gz"].startswith("cannot read NIfTI (slices ")
    assert not list((tmp_path / "raw").rglob("*.dcm"))


# Hostile headers: a valid small volume's header with fields set to what hypothesis draws.
_SIZES = st.sampled_from([-1, 0, 1, 2, 3, 5, 8, 64, 4096, 32767])
_FLOATS = st.sampled_from([0.0, -1.0, 1.0, 0.5, 1e-30, 1e30, 3e38, np.nan, np.inf, -np.inf]) | st.floats(
    width=32
)
_FIELDS = {
    "dim": st.lists(_SIZES, min_size=8, max_size=8).map(lambda dim: [dim[0] % 10 - 1, *dim[1:]]),
    "pixdim": st.lists(_FLOATS, min_size=8, max_size=8),
    "datatype": st.sampled_from(
        [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2304, 999]
    ),
    "bitpix": st.sampled_from([0, 1, 8, 16, 32, 64, 128, -8]),
    "vox_offset": st.sampled_from([0.0, 100.0, 352.0, 353.0, 1e9, 1e30, -352.0, np.nan]),
    "scl_slope": _FLOATS,
    "scl_inter": _FLOATS,
    "qform_code": st.integers(-2, 5),
    "sform_code": st.integers(-2, 5),
    "quatern_b": _FLOATS,
    "quatern_c": _FLOATS,
    "quatern_d": _FLOATS,
    "qoffset_x": _FLOATS,
    "srow_x": st.lists(_FLOATS, min_size=4, max_size=4),
    "srow_y": st.lists(_FLOATS, min_size=4, max_size=4),
    "srow_z": st.lists(_FLOATS, min_size=4, max_size=4),
    "magic": st.sampled_from([b"n+1", b"ni1", b"n+2", b"abc"]),
}
_CHANGES = st.dictionaries(st.sampled_from(sorted(_FIELDS)), st.none(), max_size=4)


@st.composite
def _hostile_file(draw: st.DrawFn) -> bytes:
    data = np.random.default_rng(0).integers(-1000, 1000, (12, 10, 6)).astype(np.int16)
    header = nib.Nifti1Image(data, np.diag([-0.8, 0.9, 2.5, 1.0])).header
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    for name in draw(_CHANGES):
        header[name] = draw(_FIELDS[name])
    block = bytearray(header.binaryblock)
    for position, value in draw(st.lists(st.tuples(st.integers(0, 347), st.integers(0, 255)), max_size=4)):
        block[position] = value
    content = bytes(block) + b"\x00" * 4 + data.tobytes(order="F")
    return content[: draw(st.integers(0, len(content)))] if draw(st.booleans()) else content


@EXAMPLES
@given(content=_hostile_file(), compressed=st.booleans())
def test_any_header_opens_and_reads_within_the_limits_or_is_refused(
    content: bytes, compressed: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("hostile") / ("scan.nii.gz" if compressed else "scan.nii")
    path.write_bytes(gzip.compress(content) if compressed else content)
    tracemalloc.start()
    try:
        try:
            volume = open_volume(path, SMALL)
        except ImageDecodeError as err:
            assert err.path == path and err.reason
            return
        with volume:
            _read_every_slab(volume, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


def _read_every_slab(volume: Volume, path: Path) -> None:
    """Every slab reads as float32 of its declared shape (or fails as an ImageDecodeError); the map grid
    holds them and saves with the volume's affine, as predict writes it."""
    assert math.prod(volume.shape) <= SMALL.max_voxels
    grid = np.zeros(volume.shape, dtype=np.float32)
    try:
        for start, stop in volume.slabs(3):
            slices = volume.read(start, stop)
            assert slices.dtype == np.float32 and slices.shape == (stop - start, *volume.slice_shape)
            volume.put_slices(grid, start, slices)
    except ImageDecodeError as err:
        assert err.path == path and err.reason.startswith("cannot read NIfTI (slices ")
    save_nifti(grid, volume.affine, path.with_name("map.nii.gz"))
