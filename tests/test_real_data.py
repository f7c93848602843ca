"""The whole pipeline on a small subset of the real brain CT images (skipped where they are absent)."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from bench.workspace import REAL_DATA
from pipeline.__main__ import run_all
from pipeline.core.config import Settings
from pipeline.core.io import read_json

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real_data,
    pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"{REAL_DATA} is absent"),
]


def _subset_zip(out: Path, per_class: dict[str, int]) -> Path:
    """A zip laid out like the public dataset, with JPEGs and PNGs of every size and mode."""
    archive = out / "brain-ct-subset.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for cls, n in per_class.items():
            files = sorted((REAL_DATA / cls).iterdir())
            step = len(files) // n
            for path in files[::step][:n]:
                zipped.write(path, f"Dataset/Brain Tumor CT scan Images/{cls}/{path.name}")
    return archive


def test_pipeline_on_real_images(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    archive = _subset_zip(tmp_path, {"Healthy": 120, "Tumor": 60})
    settings = make_settings(
        "data=local",
        f"data.path={archive}",
        "preprocess.image_size=64",
        "model.width=8",
        "model.depth=3",
        "train.epochs=2",
        "train.progress=false",
        base=(),
    )
    run_all(settings)

    manifest = pd.read_csv(settings.paths.manifests / "raw.csv")
    assert manifest["class"].value_counts().to_dict() == {"healthy": 120, "tumor": 60}
    assert {"JPEG", "PNG"} <= set(manifest["format"]) and len(set(manifest["width"])) > 1
    splits = {
        name: pd.read_csv(settings.paths.splits / f"{name}.csv")
        for name in ("train", "val", "test", "test_extra")
    }
    seen = pd.concat(splits.values())
    assert seen["sha256"].is_unique, "an image appears in two splits"
    assert set(splits["train"]["class"]) == {"healthy"}
    metrics = read_json(settings.paths.stage_reports("evaluate") / "metrics.json")
    assert 0.0 <= metrics["roc_auc"] <= 1.0 and metrics["test_images"] == len(splits["test"])
    scores = pd.read_csv(settings.paths.stage_reports("evaluate") / "scores.csv")
    assert len(scores) == len(splits["test"]) + len(splits["test_extra"])
