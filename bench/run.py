"""Benchmark the pipeline and print tables (Markdown).

For each dataset, in a throw-away copy of the project, and for each training precision: every stage's
wall time under `dvc repro` (process start, imports and MLflow logging included), the train stage's
throughput beside a bare Keras `fit` of the same model at the same precision on the same in-memory
arrays (their ratio is the pipeline's overhead on training), a no-op `dvc repro`, and the predict
command's throughput on every raw image (start-up and model loading included). Then how far the test
scores move when the trained weights are run in bfloat16 instead of float32 (the scoring precision),
and, on the real images, the wall time and quality of a whole `dvc exp run` with the committed defaults.

    python -m bench.run                        # built-in data and the real sample, where present
    python -m bench.run --data synthetic --epochs 3 --precision float32 --skip-full
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from bench.workspace import REAL_DATA, copy_project, run
from pipeline.core import hardware
from pipeline.core.config import Settings
from pipeline.core.io import read_json
from pipeline.data.datasets import Split, for_data, load_split
from pipeline.detection.calibration import FILE as CALIBRATION_FILE
from pipeline.detection.calibration import Calibration, report_file
from pipeline.detection.scoring import reconstruct_and_score
from pipeline.models import build_model, load_model, with_precision
from pipeline.models.training import seed_everything
from pipeline.stages import DATA_STAGES, MODEL_STAGES
from pipeline.stages.entrypoint import compose, load_settings

DATASETS = {"synthetic": [], "real": ["data=local", f"data.path={REAL_DATA}"]}
PRECISIONS = ("float32", "mixed_bfloat16")


@contextlib.contextmanager
def in_project(project: Path, overrides: list[str]) -> Iterator[Settings]:
    """The copy's settings as its stages ran them (`for_data`), with its relative paths (its
    decoded-image cache, not a fresh decode)."""
    cwd = Path.cwd()
    os.chdir(project)
    try:
        yield for_data(load_settings(compose(overrides)))
    finally:
        os.chdir(cwd)


def bare_fit_images_per_second(project: Path, overrides: list[str]) -> float:
    """The same model, seed, precision and batches, fed from memory to `fit` with nothing else around it."""
    with in_project(project, overrides) as settings:
        train = load_split(settings, "train").images
        val = load_split(settings, "val", only_class="healthy").images
    seed_everything(settings.seed)
    model = build_model(settings.model.name, train.shape[1:], settings.model.params, settings.train.precision)
    model.compile(optimizer=keras.optimizers.Adam(settings.train.learning_rate), loss="mse")
    start = time.perf_counter()
    model.fit(
        train,
        train,
        validation_data=(val, val),
        epochs=settings.train.epochs,
        batch_size=settings.train.batch_size,
        shuffle=True,
        verbose=0,
    )
    return len(train) * settings.train.epochs / (time.perf_counter() - start)


def scoring_precision(project: Path, overrides: list[str]) -> dict[str, float]:
    """The trained model's test scores in float32 (what the pipeline does) against the same weights run
    in bfloat16: the largest change, that change over the threshold, and the labels that flip."""
    with in_project(project, overrides) as settings:
        test: Split = load_split(settings, "test")
        model = load_model(settings.paths.model_file)
        threshold = Calibration.load(report_file(settings.paths)).threshold
    head = settings.preprocess.head.threshold
    scores, speed = {}, {}
    for precision in PRECISIONS:
        copy = with_precision(model, settings.model.name, settings.model.params, precision)
        start = time.perf_counter()
        scores[precision] = reconstruct_and_score(copy, test.images, settings.score, head)[1]
        speed[precision] = len(test.images) / (time.perf_counter() - start)
    change = np.abs(scores["float32"] - scores["mixed_bfloat16"])
    flips = (scores["float32"] > threshold) != (scores["mixed_bfloat16"] > threshold)
    return {
        "test slices": len(change),
        "max score change": float(change.max()),
        "max change / threshold": float(change.max() / threshold),
        "median change / threshold": float(np.median(change) / threshold),
        "label flips": int(flips.sum()),
        "float32 score img/s": speed["float32"],
        "bfloat16 score img/s": speed["mixed_bfloat16"],
    }


def timed(project: Path, *command: str) -> float:
    start = time.perf_counter()
    run(project, *command)
    return time.perf_counter() - start


def bench(
    name: str, overrides: list[str], workdir: Path, precisions: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Stage timings and throughput per precision, and the scoring-precision comparison per precision."""
    project = copy_project(workdir / name, overrides)
    data_times = {
        f"{stage} s": timed(project, "dvc", "repro", "--single-item", stage) for stage in DATA_STAGES
    }
    rows, scoring = {}, {}
    for precision in precisions:
        with_precision_override = [*overrides, f"train.precision={precision}"]
        run(project, sys.executable, "-m", "pipeline.stages.entrypoint", *with_precision_override)
        row = dict(data_times)
        for stage in MODEL_STAGES:
            row[f"{stage} s"] = timed(project, "dvc", "repro", "--single-item", stage)
        row["no-op repro s"] = timed(project, "dvc", "repro")  # runs `publish` only (always_changed)
        seconds = timed(
            project, sys.executable, "-m", "pipeline.predict", "data/raw", "--out", "predicted.csv"
        )
        row["predict img/s"] = len(pd.read_csv(project / "predicted.csv")) / seconds
        train = read_json(project / "reports" / "train" / "metrics.json")
        row["train img/s"] = train["train_images_per_second"]
        row["bare fit img/s"] = bare_fit_images_per_second(project, with_precision_override)
        row["ratio"] = row["train img/s"] / row["bare fit img/s"]
        row["train images"] = train["train_images"]
        row["epochs"] = train["epochs_run"]
        rows[f"{name} | {precision}"] = row
        scoring[f"{name} | {precision}"] = scoring_precision(project, with_precision_override)
    return rows, scoring


def full_run(workdir: Path) -> dict[str, float]:
    """The README's real-data command with the committed defaults, timed from `dvc exp run` to its end;
    its quality, and what scoring its model in bfloat16 would change."""
    project = copy_project(workdir / "full")
    seconds = timed(project, "dvc", "exp", "run", "-S", "data=local", "-S", f"data.path={REAL_DATA}")
    val = Calibration.load(project / "reports" / "calibrate" / CALIBRATION_FILE)
    test = read_json(project / "reports" / "evaluate" / "metrics.json")
    train = read_json(project / "reports" / "train" / "metrics.json")
    scoring = scoring_precision(project, DATASETS["real"])
    return {
        "wall s": seconds,
        "train s": train["train_seconds"],
        "epochs": train["epochs_run"],
        "val ROC AUC": val.val_roc_auc,
        "val ROC AUC low": val.val_roc_auc_ci_low,
        "val ROC AUC high": val.val_roc_auc_ci_high,
        "test ROC AUC": test["roc_auc"],
        "test ROC AUC low": test["roc_auc_ci_low"],
        "test ROC AUC high": test["roc_auc_ci_high"],
        "test accuracy": test["accuracy"],
        "test PR AUC": test["pr_auc"],
        "test sensitivity": test["recall"],
        "test specificity": test["specificity"],
        "test blanked ROC AUC": test["blanked_roc_auc"],
        "extra tumors flagged": test["extra_tumor_detection_rate"],
        "bfloat16 scoring: max change / threshold": scoring["max change / threshold"],
        "bfloat16 scoring: label flips": scoring["label flips"],
    }


def table(rows: dict[str, dict[str, float]], first: str) -> str:
    columns = list(next(iter(rows.values())))
    header = f"| {first} | " + " | ".join(columns) + " |"
    lines = [header, "|" + "---|" * (first.count("|") + 1) + "---:|" * len(columns)]
    for name, row in rows.items():
        cells = (
            f"{row[c]:.3g}"
            if isinstance(row[c], float) and abs(row[c]) < 1
            else f"{row[c]:.2f}"
            if isinstance(row[c], float)
            else str(row[c])
            for c in columns
        )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument(
        "--epochs", type=int, default=5, help="epochs for the pipeline and the bare fit alike"
    )
    parser.add_argument("--skip-full", action="store_true", help="skip the whole real-data `dvc exp run`")
    args = parser.parse_args()
    hardware.configure(0)  # the bare fit gets the threads the stages get
    rows, scoring, full = {}, {}, None
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        for name in args.data:
            if name == "real" and not REAL_DATA.is_dir():
                print(f"skipping real data: {REAL_DATA} is absent")
                continue
            overrides = [*DATASETS[name], f"train.epochs={args.epochs}", "train.early_stopping_patience=1000"]
            stage_rows, scoring_rows = bench(name, overrides, Path(workdir), args.precision)
            rows |= stage_rows
            scoring |= scoring_rows
        if REAL_DATA.is_dir() and not args.skip_full:
            full = full_run(Path(workdir))
    print(table(rows, "data | trained in"), end="\n\n")
    print(table(scoring, "data | trained in"), end="\n\n")
    if full:
        print(table({"real, defaults": full}, "`dvc exp run`"))


if __name__ == "__main__":
    main()
