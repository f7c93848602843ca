"""Compare trained models side by side, from what their MLflow runs recorded.

    python -m pipeline.compare                       # every run of the configured experiment
    python -m pipeline.compare variants --sweep multirun/2026-11-27/21-25-10
    python -m pipeline.compare 3f2a... 9c1b... --format html --out reports/compare

Writes a table (variant, its parameters, test ROC AUC, PR AUC, accuracy, F1, threshold, validation
ROC AUC, training time, parameter count; failed runs too, with their error), the test ROC curves
overlaid and the test error histograms side by side: Markdown plus PNG files, or one HTML page. The
report is also logged to MLflow as a run of its own (tag `stage=compare`) in the first run's experiment.
"""

from __future__ import annotations

import argparse
import base64
import logging
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.core.config import MlflowConfig
from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path
from pipeline.core.params import params_section
from pipeline.evaluation.plots import histogram_panels, roc_overlay, save_figure
from pipeline.stages import tracking

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# Table column -> (MLflow metric, format); a metric logged with `_ci_low`/`_ci_high` gets its interval.
METRICS = {
    "ROC AUC": ("test_roc_auc", "{:.3f}"),
    "PR AUC": ("test_pr_auc", "{:.3f}"),
    "accuracy": ("test_accuracy", "{:.3f}"),
    "sensitivity": ("test_recall", "{:.3f}"),
    "specificity": ("test_specificity", "{:.3f}"),
    "F1": ("test_f1", "{:.3f}"),
    "ROC AUC, outside head blanked": ("test_blanked_roc_auc", "{:.3f}"),
    "ROC AUC inside the largest source": ("test_source_roc_auc", "{:.3f}"),
    "metadata alone ROC AUC": ("test_metadata_roc_auc", "{:.3f}"),
    "mid-level ROC AUC": ("test_mid_level_roc_auc", "{:.3f}"),
    "scan ROC AUC": ("test_scan_roc_auc", "{:.3f}"),
    "threshold": ("threshold", "{:.4g}"),
    "val ROC AUC": ("val_roc_auc", "{:.3f}"),
    "epochs": ("epochs_run", "{:.0f}"),
    "train s": ("train_seconds", "{:.0f}"),
    "parameters": ("parameters", "{:,.0f}"),
}
PARAMS = {
    "learning rate": "train.learning_rate",
    "image size": "preprocess.image_size",
    "head mask": "preprocess.head.mask",
    "score": "score.kind",
    "normalize": "score.normalize",
    "TTA": "score.tta",
    "smoothing": "score.smoothing",
    "threshold rule": "threshold.method",
    "precision": "precision",
}  # what train.precision resolved to on the machine that trained
FORMATS = ("markdown", "html")


@dataclass(frozen=True)
class Compared:
    """One row of the comparison and the test-set curves behind its plots (None if it has none)."""

    run: Run
    roc: pd.DataFrame | None
    scores: pd.DataFrame | None

    @property
    def label(self) -> str:
        """The run's sweep overrides (e.g. `experiment=method`) or its model, and its short id."""
        tags = self.run.data.tags
        return f"{tags.get('sweep_overrides') or tags.get('model', '?')} ({self.run.info.run_id[:8]})"


def find_runs(client: MlflowClient, targets: list[str], sweep: str | None) -> list[Run]:
    """Runs named by id, and the model runs of experiments named (oldest first), optionally one sweep's."""
    runs: list[Run] = []
    for target in targets:
        if RUN_ID.match(target):
            try:
                runs.append(client.get_run(target))
            except MlflowException:
                raise PipelineError(f"no MLflow run with id '{target}'") from None
            continue
        experiment = client.get_experiment_by_name(target)
        if experiment is None:
            raise PipelineError(f"'{target}' is neither a run id nor an MLflow experiment")
        query = "tags.stage != 'compare'" + (f" and tags.sweep = '{sweep}'" if sweep else "")
        runs.extend(
            client.search_runs(
                [experiment.experiment_id], filter_string=query, order_by=["attributes.start_time ASC"]
            )
        )
    if not runs:
        raise PipelineError(
            f"no runs to compare in {', '.join(targets)}" + (f" for sweep '{sweep}'" if sweep else "")
        )
    return runs


def _artifact(run: Run, path: str, folder: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path=path, dst_path=str(folder)
            )
        )
    except (MlflowException, OSError):
        return None  # a failed run, or one that never reached evaluate


def collect(runs: list[Run]) -> list[Compared]:
    with tempfile.TemporaryDirectory() as tmp:
        return [
            Compared(
                run,
                _artifact(run, "evaluate/roc.csv", Path(tmp) / run.info.run_id),
                _artifact(run, "evaluate/scores.csv", Path(tmp) / run.info.run_id),
            )
            for run in runs
        ]


def _model_params(run: Run) -> str:
    params = run.data.params
    return " ".join(
        f"{key.removeprefix('model.')}={value}"
        for key, value in sorted(params.items())
        if key.startswith("model.") and key != "model.name"
    )


def _with_interval(metrics: dict[str, float], key: str, fmt: str) -> str:
    """`0.912 [0.884, 0.938]` (value and 95% interval), the value alone, or blank when not logged."""
    if key not in metrics:
        return ""
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    interval = f" [{fmt.format(low)}, {fmt.format(high)}]" if low is not None and high is not None else ""
    return fmt.format(metrics[key]) + interval


def table(compared: list[Compared]) -> pd.DataFrame:
    """One row per run, values formatted for reading; missing metrics are blank."""
    rows = []
    for item in compared:
        run, metrics = item.run, item.run.data.metrics
        row = {
            "run": run.info.run_id[:8],
            "variant": run.data.tags.get("model", ""),
            "status": run.info.status,
            "model parameters": _model_params(run),
        }
        row.update({column: run.data.params.get(key, "") for column, key in PARAMS.items()})
        row["score applied"] = run.data.tags.get("score_applied", "")  # what score.kind=auto chose
        row.update({column: _with_interval(metrics, key, fmt) for column, (key, fmt) in METRICS.items()})
        if "error" in run.data.tags:
            row["status"] += f": {run.data.tags['error'][:120]}"
        rows.append(row)
    return pd.DataFrame(rows)


def _figures(compared: list[Compared], out: Path) -> dict[str, Path]:
    """The ROC overlay and the histogram panels of the runs that reached evaluate (title -> file)."""
    evaluated = [item for item in compared if item.roc is not None and item.scores is not None]
    if not evaluated:
        return {}
    figures = {
        "ROC curves (test set)": out / "roc.png",
        "Reconstruction errors (test set)": out / "histograms.png",
    }
    curves = {f"{item.label} AUC {item.run.data.metrics['test_roc_auc']:.3f}": item.roc for item in evaluated}
    save_figure(roc_overlay(curves), figures["ROC curves (test set)"])
    panels = {
        item.label: (_test_errors(item.scores), item.run.data.metrics["threshold"]) for item in evaluated
    }
    save_figure(histogram_panels(panels), figures["Reconstruction errors (test set)"])
    return figures


def _test_errors(scores: pd.DataFrame) -> dict[str, np.ndarray]:
    test = scores[scores["split"] == "test"]
    return {name: group["score"].to_numpy() for name, group in test.groupby("class")}


def _html(title: str, rows: pd.DataFrame, figures: dict[str, Path]) -> str:
    """One self-contained page: the table and the figures embedded as data URIs."""
    images = "".join(
        f"<h2>{caption}</h2><img alt='{caption}' src='data:image/png;base64,"
        f"{base64.b64encode(path.read_bytes()).decode()}'>"
        for caption, path in figures.items()
    )
    style = (
        "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>"
        f"</head><body><h1>{title}</h1>{rows.to_html(index=False)}{images}</body></html>\n"
    )


def write_report(compared: list[Compared], out: Path, fmt: str) -> list[Path]:
    """Write the report into `out`; returns the files written, the report first."""
    out.mkdir(parents=True, exist_ok=True)
    rows = table(compared)
    title = f"Comparison of {len(rows)} runs"
    figures = _figures(compared, out)
    if fmt == "markdown":
        report = out / "comparison.md"
        text = (
            "\n\n".join(
                [
                    f"# {title}",
                    rows.to_markdown(index=False, disable_numparse=True),
                    *(f"![{caption}]({path.name})" for caption, path in figures.items()),
                ]
            )
            + "\n"
        )
        written = [report, *figures.values()]
    else:
        report = out / "comparison.html"
        text = _html(title, rows, figures)
        for path in figures.values():
            path.unlink()  # embedded in the page
        written = [report]
    with atomic_path(report) as tmp:
        tmp.write_text(text)
    return written


def log_report(compared: list[Compared], files: list[Path], config: MlflowConfig) -> str:
    """Log the report as a run of its own next to the first compared run; returns its id."""
    first = compared[0].run
    with mlflow.start_run(
        experiment_id=first.info.experiment_id,
        run_name=f"compare-{len(compared)}-runs",
        tags={
            "stage": "compare",
            "git_commit": tracking.git_commit(),
            "compared_runs": ",".join(item.run.info.run_id for item in compared),
        },
    ) as run:
        for path in files:
            mlflow.log_artifact(str(path), "compare")
    return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "targets", nargs="*", help="run ids or experiment names (default: params.yaml's mlflow.experiment)"
    )
    parser.add_argument("--sweep", help="only this sweep's runs (its folder, as in the runs' `sweep` tag)")
    parser.add_argument("--out", type=Path, default=Path("reports/compare"), help="report folder")
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = params_section("mlflow", MlflowConfig)  # MLFLOW_TRACKING_URI, if set, takes precedence
    tracking.setup(config)
    try:
        compared = collect(find_runs(MlflowClient(), args.targets or [config.experiment], args.sweep))
        files = write_report(compared, args.out, args.format)
        if not args.no_log:
            log.info("logged to MLflow run %s", log_report(compared, files, config))
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    log.info("compared %d runs: %s", len(compared), files[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
