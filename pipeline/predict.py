"""Score new slices with a trained detector.

    python -m pipeline.predict PATH [--model MODEL] [--out scores.csv] [--heatmaps DIR]

PATH is an image (PNG, JPEG, DICOM, ...), a folder (searched recursively) or a .zip of either. MODEL
is a detector folder, an MLflow model URI (`runs:/<run id>/detector`, `models:/<name>@<alias>`), or
by default the detector of the last `dvc repro`. The CSV has one row per file: its score, the label
(score > threshold), the threshold and model that made them, or why the file could not be read.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline import hardware
from pipeline.config import RuntimeConfig
from pipeline.data.sources import safe_extract
from pipeline.detector import Detector
from pipeline.errors import DataError, PipelineError
from pipeline.io import write_csv
from pipeline.params import params_section
from pipeline.plots import reconstruction_grid, save_figure
from pipeline.progress import progress
from pipeline.serving import default_model, load_detector

log = logging.getLogger(__name__)
COLUMNS = ["path", "score", "is_anomaly", "threshold", "model", "run_id", "error"]
CHUNK = 64  # files decoded and scored at a time: memory stays flat on large folders


@dataclass(frozen=True)
class InputFile:
    file: Path  # where to read it
    path: str  # how the CSV names it (inside a zip: archive.zip/inner/path)
    relative: Path  # its place under PATH, which its heat map mirrors


def collect(path: Path, extract_to: Path) -> list[InputFile]:
    """Every file PATH stands for; hidden files (.DS_Store, ...) are skipped."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and zipfile.is_zipfile(path):
        safe_extract(path, extract_to)
        root, shown = extract_to, path
    elif path.is_file():
        return [InputFile(path, str(path), Path(path.name))]
    else:
        root, shown = path, path
    files = [
        file
        for file in sorted(root.rglob("*"))
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(root).parts)
    ]
    if not files:
        raise DataError(f"{path}: no files to score")
    return [
        InputFile(file, (shown / file.relative_to(root)).as_posix(), file.relative_to(root)) for file in files
    ]


def predict(
    detector: Detector, files: list[InputFile], model: str, heatmaps: Path | None = None
) -> pd.DataFrame:
    """Score every file; unreadable ones get a row with the reason instead of a score."""
    rows = []
    chunks = [files[start : start + CHUNK] for start in range(0, len(files), CHUNK)]
    for chunk in progress(chunks, desc="predict", unit="batch"):
        batch = detector.decode([item.file for item in chunk], [item.path for item in chunk])
        reconstructions, scores = detector.reconstruct_and_score(batch.images)
        for index, score in zip(batch.decoded, scores, strict=True):
            rows.append(
                {
                    "path": chunk[index].path,
                    "score": float(score),
                    "is_anomaly": bool(detector.is_anomaly(score)),
                }
            )
        for index, reason in batch.errors.items():
            rows.append({"path": chunk[index].path, "error": reason})
        if heatmaps is not None:
            maps = detector.residual_maps(batch.images, reconstructions)
            for row, index in enumerate(batch.decoded):
                item, score = chunk[index], scores[row]
                figure = reconstruction_grid(
                    batch.images[row : row + 1],
                    reconstructions[row : row + 1],
                    maps[row : row + 1],
                    [f"{item.relative.name}\nscore {score:.3g}"],
                )
                save_figure(figure, heatmaps / item.relative.with_name(f"{item.relative.name}.png"))
    frame = pd.DataFrame(rows, columns=COLUMNS).assign(
        threshold=detector.threshold, model=model, run_id=detector.info.get("run_id", "")
    )
    order = {item.path: i for i, item in enumerate(files)}
    return frame.sort_values("path", key=lambda paths: paths.map(order), ignore_index=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", type=Path, help="an image file, a folder (searched recursively) or a .zip")
    parser.add_argument(
        "--model",
        help=f"detector folder or MLflow model URI (default: {default_model()}, the last `dvc repro`)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("scores.csv"), help="CSV to write (default: %(default)s)"
    )
    parser.add_argument("--heatmaps", type=Path, help="folder for input / reconstruction / residual figures")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        hardware.configure(params_section("runtime", RuntimeConfig).threads)
        model = args.model or str(default_model())
        detector = load_detector(model)
        with tempfile.TemporaryDirectory(prefix="predict-") as extracted:
            files = collect(args.path, Path(extracted))
            scores = predict(detector, files, model, args.heatmaps)
        write_csv(args.out, scores)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    failed = scores["error"].notna()
    for row in scores[failed].itertuples():
        print(f"warning: {row.path}: {row.error}", file=sys.stderr)
    log.info(
        "%s: %d files scored, %d flagged as anomalous (threshold %.6g), %d unreadable",
        args.out,
        int((~failed).sum()),
        int(scores["is_anomaly"].eq(True).sum()),
        detector.threshold,
        int(failed.sum()),
    )
    if failed.all():
        print(
            f"error: none of the {len(scores)} files under {args.path} could be read as an image",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
