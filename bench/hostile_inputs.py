"""Peak memory of predict, the served model and `download` on hostile input, against the 2 GB they must
stay under.

Small files that claim or decode to gigabytes: single-colour PNGs of 13000 x 13000 and 8000 x 8000 pixels,
a zip with a 2 GiB entry, NIfTI volumes whose header claims 2048 x 2048 x 300 voxels (a 2.4 MB gzip of
zeros), a 4-D volume (a header alone) or 6000 x 6000 slices, DICOM files whose deflated dataset inflates to
3 GB or 1 GB, DICOM files whose JPEG 2000 codestream is 13000 x 13000 while their header says 128 x 128, a
series whose headers claim 30000 x 30000 (with `--maps`); and what is largest while still allowed: a folder
of slices at `preprocess.max_pixels` (scored; 64 of them with `--maps`), a volume at `preprocess.max_voxels`
with `--maps`, and one ordinary slice for reference. Each case runs in its own process
(`python -m pipeline.predict`, one request to the packaged detector loaded as MLflow loads it, or
`python -m pipeline.stages.download` of a data folder), whose peak resident memory the kernel reports when it
exits. The detector is the configured model, untrained: its weights do not change what reading costs.

    python -m bench.hostile_inputs [--only NAME ...]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless

from pipeline.core.config import ModelConfig, PreprocessConfig, ScoreConfig
from pipeline.core.params import ROOT, params_section
from pipeline.data.dicom import write_ct_slice
from pipeline.data.images import DECODE_WORKERS
from pipeline.detection.detector import Detector
from pipeline.models import build_model
from pipeline.serving import model as serving
from pipeline.stages import packaging

LIMIT_GB = 2.0
AT_LIMIT = (
    12  # slices at preprocess.max_pixels in one folder: more than the decode workers, fewer than a chunk
)
CHUNK_AT_LIMIT = 64  # ... and a whole chunk of them, with --maps (maps are written one by one)
MiB = 2**20
# predict as on a machine with many cores, where the decode workers are at their most
MANY_CORES = (
    "import os, runpy; os.cpu_count = lambda: 64; runpy.run_module('pipeline.predict', run_name='__main__')"
)
# The measured process is started by this small one, which reports the kernel's account of its peak: Linux
# counts in a process's peak what the process it was forked from held at the fork, so a command started
# straight from this benchmark (TensorFlow loaded, large inputs made) would show this benchmark's peak.
PEAK_LINE = "peak kB: "
PEAK = f"""
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
print("{PEAK_LINE}%d" % usage.ru_maxrss, flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""
SERVE = """
import sys, mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
try:
    model.predict(pd.DataFrame({"image": [open(sys.argv[2], "rb").read()]}))
    print("scored")
except mlflow.exceptions.MlflowException as err:
    print(f"HTTP {err.get_http_status_code()}: {err.message}")
"""


def head_slice(side: int) -> Image.Image:
    """A bright disc on black, `side` pixels square: a slice that passes every check and is preprocessed."""
    rows, cols = np.ogrid[:side, :side]
    disc = (rows - side / 2) ** 2 + (cols - side / 2) ** 2 < (side / 3) ** 2
    return Image.fromarray(np.where(disc, 180, 0).astype(np.uint8))


def copies(folder: Path, name: str, count: int, write: Callable[[Path], object]) -> Path:
    """`folder` holding `count` copies of the file `write` makes (`<stem>_<n><suffix>`)."""
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / name
    write(first)
    for copy in range(2, count + 1):
        shutil.copyfile(first, first.with_name(f"{first.stem}_{copy}{first.suffix}"))
    return folder


# --- NIfTI: a header that claims much, voxels streamed into the gzip -----------------------------------


def nifti(path: Path, shape: tuple[int, ...], slab: Callable[[int], np.ndarray] | None = None) -> Path:
    """A gzipped int16 NIfTI of `shape` (1 mm voxels), its voxels written slice by slice: `slab(k)` gives
    axial slice k (zeros when None); with `shape` 4-D or `slab` returning nothing, only the header."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header.set_sform(np.eye(4), code=1)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(header.binaryblock + b"\0" * 4)
        if len(shape) == 3:
            zeros = np.zeros(shape[:2], np.int16)
            for k in range(shape[2]):
                out.write(np.asfortranarray(zeros if slab is None else slab(k)).tobytes(order="F"))
    return path


def phantom_slab(side: int) -> Callable[[int], np.ndarray]:
    """Axial slices of a head: a skull ring (1000 HU) around brain (35 HU) in air (-1000 HU)."""
    rows, cols = np.ogrid[:side, :side]
    radius = np.sqrt((rows - side / 2) ** 2 + (cols - side / 2) ** 2)
    plane = np.where(radius < side * 0.4, 35, -1000).astype(np.int16)
    plane[(radius >= side * 0.37) & (radius < side * 0.4)] = 1000
    return lambda k: plane


# --- DICOM: deflated datasets and encapsulated codestreams -------------------------------------------


def deflated_dicom(path: Path, inflated: int) -> Path:
    """A CT slice of 512 x 512 whose Deflated Explicit VR Little Endian dataset inflates to about `inflated`
    bytes (its pixel data far longer than the header says): a few MB on disk."""
    write_ct_slice(path, np.zeros((512, 512)))
    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    body = pydicom.filebase.DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, dataset)
    pixels = inflated - len(body.getvalue())
    tag = b"\xe0\x7f\x10\x00OW\x00\x00" + int(pixels).to_bytes(4, "little")  # (7FE0,0010) OW, its length
    meta = pydicom.dataset.FileMetaDataset(dataset.file_meta)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    preamble = pydicom.filebase.DicomBytesIO()
    preamble.write(b"\0" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(preamble, meta, enforce_standard=True)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with path.open("wb") as out:
        out.write(preamble.getvalue())
        out.write(deflate.compress(body.getvalue() + tag))
        block = bytes(64 * MiB)
        for start in range(0, pixels, len(block)):
            out.write(deflate.compress(block[: min(len(block), pixels - start)]))
        out.write(deflate.flush())
    return path


def j2k_dicom(path: Path, side: int = 13000, claimed: int = 128) -> Path:
    """A CT slice whose header says `claimed` x `claimed` while its JPEG 2000 codestream is `side` x `side`
    (a few KB: one colour, in tiles)."""
    write_ct_slice(path, np.zeros((claimed, claimed)))
    dataset = pydicom.dcmread(path)
    codestream = tempfile.SpooledTemporaryFile()
    Image.new("L", (side, side), 0).save(
        codestream, "JPEG2000", no_jp2=True, irreversible=False, tile_size=(2048, 2048)
    )
    codestream.seek(0)
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = encapsulate([codestream.read()])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
    dataset.save_as(path, enforce_file_format=True)
    return path


def claiming_series(folder: Path, side: int = 30000, slices: int = 4) -> Path:
    """A series of `slices` CT files whose headers claim `side` x `side` pixels (their pixel data: small)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(slices):
        path = write_ct_slice(folder / f"{k}.dcm", np.zeros((16, 16)), series="claims", position=k)
        dataset = pydicom.dcmread(path)
        dataset.Rows = dataset.Columns = side
        dataset.save_as(path, enforce_file_format=True)
    return folder


def zip_bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
        with zipped.open("zeros.png", "w", force_zip64=True) as entry:
            for _ in range(2048):
                entry.write(bytes(MiB))  # 2 GiB of zeros
    return path


# --- the cases -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    how: str  # predict, predict --maps, predict (many cores), served, download
    make: Callable[[Path, PreprocessConfig], Path]  # (an empty folder, the config) -> what is given


def _slices(name: str, count: int, image: Callable[[PreprocessConfig], Image.Image]) -> Callable:
    """`count` copies of one image, in the case's folder."""
    return lambda folder, config: copies(folder, name, count, lambda path: image(config).save(path))


def _at_limit(config: PreprocessConfig) -> Image.Image:
    return head_slice(int(config.max_pixels**0.5))


def _one(make: Callable[[Path], Path], name: str) -> Callable[[Path, PreprocessConfig], Path]:
    """One file, `name`, in the case's folder."""
    return lambda folder, config: make(folder / name)


def _hostile_volumes(folder: Path, config: PreprocessConfig) -> Path:
    """Every NIfTI that claims too much, in one folder."""
    nifti(folder / "zeros.nii.gz", (2048, 2048, 300))
    nifti(folder / "header_only_4d.nii.gz", (512, 512, 512, 100))
    nifti(folder / "slices_6000.nii.gz", (6000, 6000, 2))
    return folder


def _dicom_bombs(folder: Path, config: PreprocessConfig) -> Path:
    """Every DICOM bomb, in one folder."""
    deflated_dicom(folder / "deflated_3GB.dcm", 3 * 10**9)
    deflated_dicom(folder / "deflated_1GB.dcm", 10**9)
    copies(folder, "j2k.dcm", 6, j2k_dicom)
    return folder


def _data_folder(fill: Callable[[Path, PreprocessConfig], Path]) -> Callable[[Path, PreprocessConfig], Path]:
    """A dataset for `download`: `fill`'s files in Healthy/, ordinary slices in Tumor/."""

    def make(folder: Path, config: PreprocessConfig) -> Path:
        (folder / "Healthy").mkdir()
        fill(folder / "Healthy", config)
        copies(folder / "Tumor", "tumor.png", 2, lambda path: head_slice(256).save(path))
        return folder

    return make


def _ordinary(config: PreprocessConfig) -> Image.Image:
    return head_slice(512)


def _grey(side: int) -> Callable[[PreprocessConfig], Image.Image]:
    return lambda config: Image.new("L", (side, side), 128)


CASES = (
    Case("one ordinary slice", "predict", _slices("slice.png", 1, _ordinary)),
    Case("13000 x 13000 PNG", "predict", _slices("13000.png", 1, _grey(13000))),
    Case("three 8000 x 8000 PNGs", "predict", _slices("8000.png", 3, _grey(8000))),
    Case(f"{AT_LIMIT} slices at max_pixels (scored)", "predict", _slices("limit.png", AT_LIMIT, _at_limit)),
    Case(
        f"{AT_LIMIT} slices at max_pixels (scored)",
        "predict (64 cores)",
        _slices("limit.png", AT_LIMIT, _at_limit),
    ),
    Case(
        f"{CHUNK_AT_LIMIT} slices at max_pixels (scored)",
        "predict --maps",
        _slices("limit.png", CHUNK_AT_LIMIT, _at_limit),
    ),
    Case("zip bomb (a 2 GiB entry)", "predict", _one(zip_bomb, "bomb.zip")),
    Case(
        "NIfTI of 2048 x 2048 x 300 zeros",
        "predict",
        _one(lambda path: nifti(path, (2048, 2048, 300)), "zeros.nii.gz"),
    ),
    Case(
        "NIfTI header alone, 4-D",
        "predict",
        _one(lambda path: nifti(path, (512, 512, 512, 100)), "4d.nii.gz"),
    ),
    Case(
        "NIfTI of 6000 x 6000 slices",
        "predict --maps",
        _one(lambda path: nifti(path, (6000, 6000, 2)), "wide.nii.gz"),
    ),
    Case(
        "NIfTI at max_voxels, 512^3 (scored)",
        "predict --maps",
        _one(lambda path: nifti(path, (512, 512, 512), phantom_slab(512)), "head.nii.gz"),
    ),
    Case(
        "deflated DICOM inflating to 3 GB",
        "predict",
        _one(lambda path: deflated_dicom(path, 3 * 10**9), "d.dcm"),
    ),
    Case(
        "deflated DICOM inflating to 1 GB", "predict", _one(lambda path: deflated_dicom(path, 10**9), "d.dcm")
    ),
    Case(
        "six DICOMs, JPEG 2000 of 13000 x 13000",
        "predict",
        lambda folder, config: copies(folder, "j2k.dcm", 6, j2k_dicom),
    ),
    Case(
        "series claiming 30000 x 30000",
        "predict --maps",
        lambda folder, config: claiming_series(folder / "ct"),
    ),
    Case(
        "one ordinary slice",
        "served",
        lambda folder, config: _slices("s.png", 1, _ordinary)(folder, config) / "s.png",
    ),
    Case(
        "13000 x 13000 PNG",
        "served",
        lambda folder, config: _slices("s.png", 1, _grey(13000))(folder, config) / "s.png",
    ),
    Case(
        "deflated DICOM inflating to 3 GB",
        "served",
        _one(lambda path: deflated_dicom(path, 3 * 10**9), "d.dcm"),
    ),
    Case("DICOM, JPEG 2000 of 13000 x 13000", "served", _one(j2k_dicom, "j2k.dcm")),
    Case("every hostile NIfTI in Healthy/", "download", _data_folder(_hostile_volumes)),
    Case("every DICOM bomb in Healthy/", "download", _data_folder(_dicom_bombs)),
)


def measured(case: Case, path: Path, command: list[str]) -> dict[str, str | float | int]:
    """Run `command` from the project's root, through `PEAK`: the row of its peak resident memory, exit
    code and first warning or error (else its last line)."""
    wrapped = [sys.executable, "-c", PEAK, *command]
    done = subprocess.run(wrapped, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()] or [""]
    peak = int(next(line for line in reversed(lines) if line.startswith(PEAK_LINE)).removeprefix(PEAK_LINE))
    lines = [line for line in lines if not line.startswith(PEAK_LINE)] or [""]
    said = next((line for line in lines if line.startswith(("warning:", "error:", "HTTP"))), lines[-1])
    return {
        "input": case.name,
        "run": case.how,
        "on disk": disk_size(path),
        "peak GB": peak * 1024 / 1e9,  # Linux reports kilobytes
        "exit": done.returncode,
        "what it says": said[:110],
    }


def disk_size(path: Path) -> str:
    size = (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def command(case: Case, path: Path, work: Path, detector: Path, served: Path) -> list[str]:
    """How `case` runs on `path`; its outputs go under `work`."""
    predict = ["--model", str(detector), "--out", str(work / "scores.csv"), str(path)]
    if case.how == "predict --maps":
        predict += ["--maps", str(work / "maps")]
    if case.how == "served":
        return [sys.executable, "-c", SERVE, str(served), str(path)]
    if case.how == "download":
        outputs = [
            f"paths.{key}={work / key}" for key in ("raw", "manifests", "splits", "cache", "model", "reports")
        ]
        tracking = [
            f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            f"mlflow.artifact_root={work / 'mlruns'}",
        ]
        return [
            sys.executable,
            "-m",
            "pipeline.stages.download",
            "data=local",
            f"data.path={path}",
            *outputs,
            *tracking,
        ]
    if case.how == "predict (64 cores)":
        return [sys.executable, "-c", MANY_CORES, *predict]
    return [sys.executable, "-m", "pipeline.predict", *predict]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hostile_inputs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--only", nargs="*", default=(), help="run the cases whose input or run contains one of these"
    )
    args = parser.parse_args()
    # the one-channel detector: most cases are 8-bit images, which one reading Hounsfield windows refuses
    preprocess = params_section("preprocess", PreprocessConfig).model_copy(update={"extra_windows": ()})
    model_config = params_section("model", ModelConfig)
    size = preprocess.image_size
    model = build_model(model_config.name, (size, size, 1), model_config.params)
    score = ScoreConfig(kind="mse", region="head", percentile=99, smoothing=2.0)
    detector = Detector(model, 0.5, preprocess, score, {"run_id": "bench"}, pixel_threshold=0.1)
    cases = [
        case
        for case in CASES
        if not args.only or any(word in f"{case.name} {case.how}" for word in args.only)
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        served = Path(tmp) / "served"
        packaging.save(detector, served)
        folder = served / "artifacts" / serving.ARTIFACT
        for number, case in enumerate(cases):
            work = Path(tmp) / f"case{number}"
            (work / "in").mkdir(parents=True)
            path = case.make(work / "in", preprocess)
            rows.append(measured(case, path, command(case, path, work, folder, served)))
            shutil.rmtree(work)
            print(f"{case.name} ({case.how}): {rows[-1]['peak GB']:.2f} GB", file=sys.stderr)
    table = pd.DataFrame(rows)
    table["under 2 GB"] = np.where(table["peak GB"] < LIMIT_GB, "yes", "NO")
    print(
        f"decode workers: {DECODE_WORKERS}; preprocess.max_pixels: {preprocess.max_pixels}; "
        f"preprocess.max_voxels: {preprocess.max_voxels}"
    )
    print(table.to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
