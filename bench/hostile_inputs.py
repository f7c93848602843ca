"""Peak memory of predict and of the served model on hostile input, against the 2 GB they must stay under.

Small files that decode to gigabytes (single-colour PNGs of 13000 x 13000 and 8000 x 8000 pixels, a
zip with a 2 GiB entry), a folder of slices at `preprocess.max_pixels` (the largest that are decoded),
and one ordinary slice for reference. Each case runs in its own process (`python -m pipeline.predict`,
or one request to the packaged detector loaded as MLflow loads it), whose peak resident memory the
kernel reports when it exits. The detector is the configured model, untrained: its weights do not
change what decoding costs.

    python -m bench.hostile_inputs
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import serving
from pipeline.config import ModelConfig, PreprocessConfig, ScoreConfig
from pipeline.data.images import DECODE_WORKERS
from pipeline.detector import Detector
from pipeline.models import build_model
from pipeline.params import ROOT, params_section

LIMIT_GB = 2.0
AT_LIMIT = (
    12  # slices at preprocess.max_pixels in one folder: more than the decode workers, fewer than a chunk
)
# predict as on a machine with many cores, where the decode workers are at their most
MANY_CORES = (
    "import os, runpy; os.cpu_count = lambda: 64; runpy.run_module('pipeline.predict', run_name='__main__')"
)
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


def write_inputs(folder: Path, max_pixels: int) -> dict[str, Path]:
    """Each case's PATH under `folder`."""
    cases = {name: folder / name for name in ("one", "large", "three", "at limit", "bomb")}
    for path in cases.values():
        path.mkdir(parents=True)
    head_slice(512).save(cases["one"] / "slice.png")
    Image.new("L", (13000, 13000), 128).save(cases["large"] / "13000.png")
    Image.new("L", (8000, 8000), 128).save(cases["three"] / "8000_1.png")
    for copy in (2, 3):
        (cases["three"] / f"8000_{copy}.png").write_bytes((cases["three"] / "8000_1.png").read_bytes())
    side = int(max_pixels**0.5)
    head_slice(side).save(cases["at limit"] / "limit_1.png")
    for copy in range(2, AT_LIMIT + 1):
        (cases["at limit"] / f"limit_{copy}.png").write_bytes(
            (cases["at limit"] / "limit_1.png").read_bytes()
        )
    with zipfile.ZipFile(cases["bomb"] / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zipped:
        with zipped.open("zeros.png", "w", force_zip64=True) as entry:
            for _ in range(2048):
                entry.write(bytes(2**20))  # 2 GiB of zeros
    cases["bomb"] = cases["bomb"] / "bomb.zip"
    return cases


def measured(case: str, path: Path, *command: str) -> dict[str, str | float | int]:
    """Run `command` from the project's root: the row of its peak resident memory, exit code and first
    warning or error (else its last line)."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # the kernel's account of this process alone
    process.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in output.splitlines() if line.strip()] or [""]
    said = next((line for line in lines if line.startswith(("warning:", "error:", "HTTP"))), lines[-1])
    return {
        "case": case,
        "on disk": disk_size(path),
        "peak GB": usage.ru_maxrss * 1024 / 1e9,  # Linux reports kilobytes
        "exit": process.returncode,
        "what it says": said[:120],
    }


def disk_size(path: Path) -> str:
    size = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
    return f"{size / 1e3:.0f} kB"


def main() -> None:
    preprocess = params_section("preprocess", PreprocessConfig)
    model_config = params_section("model", ModelConfig)
    size = preprocess.image_size
    model = build_model(model_config.name, (size, size, 1), model_config.params)
    score = ScoreConfig(kind="mse", region="head", percentile=99, smoothing=2.0)
    detector = Detector(model, 0.5, preprocess, score, {"run_id": "bench"})
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        cases = write_inputs(Path(tmp) / "in", preprocess.max_pixels)
        served = Path(tmp) / "served"
        serving.save(detector, served, (cases["one"] / "slice.png").read_bytes())
        folder = served / "artifacts" / serving.ARTIFACT
        options = ["--model", str(folder), "--out", str(Path(tmp) / "scores.csv")]
        rows = [
            measured(f"predict: {name}", path, sys.executable, "-m", "pipeline.predict", *options, str(path))
            for name, path in cases.items()
        ]
        limit = cases["at limit"]
        rows.append(
            measured(
                "predict: at limit, many cores", limit, sys.executable, "-c", MANY_CORES, *options, str(limit)
            )
        )
        rows += [
            measured(f"served: {name}", file, sys.executable, "-c", SERVE, str(served), str(file))
            for name, file in (("one", cases["one"] / "slice.png"), ("large", cases["large"] / "13000.png"))
        ]
    table = pd.DataFrame(rows)
    table["under 2 GB"] = np.where(table["peak GB"] < LIMIT_GB, "yes", "NO")
    print(f"decode workers: {DECODE_WORKERS}; preprocess.max_pixels: {preprocess.max_pixels}")
    print(table.to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
