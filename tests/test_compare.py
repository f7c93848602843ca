"""`python -m pipeline.compare` on runs with known numbers, logged the way the stages log them."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline import compare
from pipeline.core.config import MlflowConfig
from pipeline.stages import tracking

EXPERIMENT = "variants"
RUNS = {  # variant -> (model params, metrics)
    "cae": (
        {"model.width": "16", "model.latent_dim": "128", "precision": "mixed_bfloat16"},
        {
            "test_roc_auc": 0.8125,
            "test_pr_auc": 0.75,
            "test_accuracy": 0.7,
            "test_f1": 0.65,
            "threshold": 0.0231,
            "val_roc_auc": 0.79,
            "epochs_run": 12,
            "train_seconds": 401.2,
            "parameters": 2447233,
        },
    ),
    "vae": (
        {"model.width": "8", "model.latent_dim": "64", "model.beta": "1.0", "precision": "float32"},
        {
            "test_roc_auc": 0.9,
            "test_roc_auc_ci_low": 0.861,
            "test_roc_auc_ci_high": 0.9349,
            "test_pr_auc": 0.875,
            "test_accuracy": 0.85,
            "test_f1": 0.8,
            "threshold": 0.0199,
            "val_roc_auc": 0.88,
            "epochs_run": 9,
            "train_seconds": 355.0,
            "parameters": 3495937,
        },
    ),
}


def _evaluate_artifacts(folder: Path, seed: int) -> Path:
    """roc.csv and scores.csv as evaluate writes them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    pd.DataFrame({"fpr": [0, 0.2, 1], "tpr": [0, 0.7, 1], "threshold": [0.05, 0.03, 0.01]}).to_csv(
        folder / "roc.csv", index=False
    )
    pd.DataFrame(
        {
            "split": ["test"] * 8 + ["test_extra"] * 2,
            "path": [f"{i}.png" for i in range(10)],
            "class": ["healthy"] * 4 + ["tumor"] * 6,
            "score": rng.uniform(0.01, 0.04, 10),
            "is_anomaly": [False] * 10,
        }
    ).to_csv(folder / "scores.csv", index=False)
    return folder


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Two evaluated runs and one failed run in a fresh store; returns variant -> run id."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = MlflowConfig(
        tracking_uri=uri,
        artifact_root=tmp_path / "artifacts",
        experiment=EXPERIMENT,
        data_experiment="data",
        registered_model="m",
        register_detector=False,
        model_alias="current",
    )
    mlflow.set_tracking_uri(uri)  # as a user exporting MLFLOW_TRACKING_URI would
    experiment = tracking.experiment_id(EXPERIMENT, config)
    ids = {}
    for seed, (variant, (params, metrics)) in enumerate(RUNS.items()):
        tags = {"model": variant, "stage": "evaluate", "score_applied": "mse" if variant == "cae" else "ssim"}
        with mlflow.start_run(experiment_id=experiment, tags=tags) as run:
            mlflow.log_params({"model.name": variant, "train.learning_rate": "0.001", **params})
            mlflow.log_metrics(metrics)
            mlflow.log_artifacts(str(_evaluate_artifacts(tmp_path / variant, seed)), "evaluate")
        ids[variant] = run.info.run_id
    failed = {"model": "deep_cae", "stage": "train", "error": "ConfigError: model.width must be at least 1"}
    with mlflow.start_run(experiment_id=experiment, tags=failed) as run:
        mlflow.log_params({"model.name": "deep_cae", "model.width": "0"})
    MlflowClient().set_terminated(run.info.run_id, "FAILED")
    ids["deep_cae"] = run.info.run_id
    return ids


def _table(report: Path) -> pd.DataFrame:
    lines = [line for line in report.read_text().splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return pd.DataFrame(cells[2:], columns=cells[0]).set_index("variant")


def test_compare_tabulates_every_run_of_an_experiment(store: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert compare.main([EXPERIMENT, "--out", str(out)]) == 0
    table = _table(out / "comparison.md")
    assert list(table.index) == ["cae", "vae", "deep_cae"]  # oldest first
    assert table.loc["cae", ["ROC AUC", "PR AUC", "accuracy", "F1", "threshold", "val ROC AUC"]].tolist() == [
        "0.812",
        "0.750",
        "0.700",
        "0.650",
        "0.0231",
        "0.790",
    ]
    assert table.loc["vae", ["ROC AUC", "epochs", "train s", "parameters"]].tolist() == [
        "0.900 [0.861, 0.935]",
        "9",
        "355",
        "3,495,937",
    ]  # an interval where one was logged
    assert table.loc["vae", "model parameters"] == "beta=1.0 latent_dim=64 width=8"
    assert table["precision"].tolist() == ["mixed_bfloat16", "float32", ""]  # what training resolved to
    assert table["score applied"].tolist() == ["mse", "ssim", ""]  # what score.kind=auto chose
    assert table.loc["deep_cae", "status"].startswith("FAILED: ConfigError: model.width")
    assert table.loc["deep_cae", "ROC AUC"] == ""
    assert (out / "roc.png").stat().st_size > 0 and (out / "histograms.png").stat().st_size > 0

    logged = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id],
        filter_string="tags.stage = 'compare'",
    )
    assert len(logged) == 1
    assert {a.path for a in MlflowClient().list_artifacts(logged[0].info.run_id, "compare")} == {
        "compare/comparison.md",
        "compare/roc.png",
        "compare/histograms.png",
    }
    assert compare.main([EXPERIMENT, "--out", str(out), "--no-log"]) == 0  # its own report run is not a row
    assert len(_table(out / "comparison.md")) == 3


def test_compare_named_runs_as_one_html_page(store: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "html"
    assert compare.main([store["vae"], store["cae"], "--format", "html", "--out", str(out), "--no-log"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["comparison.html"]
    page = (out / "comparison.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert page.index("0.900") < page.index("0.812")  # the order given
    assert "deep_cae" not in page


def test_compare_reports_unknown_targets(
    store: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert compare.main(["no-such-experiment", "--out", str(tmp_path)]) == 1
    assert "'no-such-experiment' is neither a run id nor an MLflow experiment" in capsys.readouterr().err
    assert compare.main([EXPERIMENT, "--sweep", "multirun/none", "--out", str(tmp_path)]) == 1
    assert "for sweep 'multirun/none'" in capsys.readouterr().err
