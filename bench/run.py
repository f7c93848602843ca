"""Benchmark the pipeline and print a table (Markdown).

For each dataset, in a throw-away copy of the project: every stage's wall time under `dvc repro`
(process start, imports and MLflow logging included), the train stage's throughput beside a bare
Keras `fit` of the same model on the same in-memory arrays (their ratio is the pipeline's overhead
on training), the time of a no-op `dvc repro`, and the predict command's throughput on every raw
image (start-up and model loading included).

    python -m bench.run                        # built-in data and the real sample, where present
    python -m bench.run --data synthetic --epochs 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import keras
import pandas as pd

from bench.workspace import REAL_DATA, STAGES, copy_project, run
from pipeline.config import compose, load_settings
from pipeline.data.datasets import load_split
from pipeline.io import read_json
from pipeline.models import build_model
from pipeline.training import seed_everything

DATASETS = {"synthetic": [], "real": ["data=local", f"data.path={REAL_DATA}"]}


def bare_fit_images_per_second(project: Path, overrides: list[str]) -> float:
    """The same model, seed and batches, fed from memory to `fit` with nothing else around it."""
    cwd = Path.cwd()
    os.chdir(project)  # the copy's relative paths: its decoded-image cache, not a fresh decode
    try:
        settings = load_settings(compose(overrides))
        train = load_split(settings, "train").images
        val = load_split(settings, "val", only_class="healthy").images
    finally:
        os.chdir(cwd)
    seed_everything(settings.seed)
    model = build_model(settings.model.name, train.shape[1:], settings.model.params)
    model.compile(optimizer=keras.optimizers.Adam(settings.train.learning_rate), loss="mse")
    start = time.perf_counter()
    model.fit(train, train, validation_data=(val, val), epochs=settings.train.epochs,
              batch_size=settings.train.batch_size, shuffle=True, verbose=0)
    return len(train) * settings.train.epochs / (time.perf_counter() - start)


def bench(name: str, overrides: list[str], workdir: Path) -> dict[str, float]:
    project = copy_project(workdir / name, overrides)
    row: dict[str, float] = {}
    for stage in STAGES:
        start = time.perf_counter()
        run(project, "dvc", "repro", "--single-item", stage)
        row[f"{stage} s"] = time.perf_counter() - start
    start = time.perf_counter()
    run(project, "dvc", "repro")
    row["no-op repro s"] = time.perf_counter() - start
    start = time.perf_counter()
    run(project, sys.executable, "-m", "pipeline.predict", "data/raw", "--out", "predicted.csv")
    row["predict img/s"] = len(pd.read_csv(project / "predicted.csv")) / (time.perf_counter() - start)
    train = read_json(project / "reports" / "train" / "metrics.json")
    row["train img/s"] = train["train_images_per_second"]
    row["bare fit img/s"] = bare_fit_images_per_second(project, overrides)
    row["ratio"] = row["train img/s"] / row["bare fit img/s"]
    row["train images"] = train["train_images"]
    row["epochs"] = train["epochs_run"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--epochs", type=int, default=5, help="epochs for the pipeline and the bare fit alike")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        for name in args.data:
            if name == "real" and not REAL_DATA.is_dir():
                print(f"skipping real data: {REAL_DATA} is absent")
                continue
            overrides = [*DATASETS[name], f"train.epochs={args.epochs}", "train.early_stopping_patience=1000"]
            rows[name] = bench(name, overrides, Path(workdir))
    columns = list(next(iter(rows.values())))
    print("| data | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c])
                                         for c in columns) + " |")


if __name__ == "__main__":
    main()
