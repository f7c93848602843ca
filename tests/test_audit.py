"""The shortcut audit: metadata alone explains a confounded dataset and not a clean one; the detector is
measured inside the largest mixed source group; a slice's level explains level-bound labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from pipeline.evaluation.audit import levels, shortcut_audit
from tests.conftest import preprocess_config

CONFIG = preprocess_config(32)


def _dataset(root: Path, confounded: bool, n: int = 40) -> tuple[pd.DataFrame, np.ndarray]:
    """`n` slices, half anomalous, drawn alike; with `confounded`, the anomalous ones are JPEGs of
    another size and brightness, as when the classes come from different sources."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], n // 2)
    rows = []
    for index, label in enumerate(labels):
        other_source = confounded and label == 1
        size = 48 if other_source else 40
        pixels = rng.integers(0, 120 if other_source else 200, (size, size), dtype=np.uint8)
        name, kind = (f"s{index}.jpg", "JPEG") if other_source else (f"s{index}.png", "PNG")
        Image.fromarray(pixels).save(root / name, format=kind)
        rows.append({"path": name, "width": size, "height": size, "format": kind, "mode": "L", "patient": ""})
    return pd.DataFrame(rows), labels


@pytest.mark.parametrize("confounded", [True, False])
def test_metadata_alone_explains_a_confounded_dataset_only(confounded: bool, tmp_path: Path) -> None:
    frame, labels = _dataset(tmp_path, confounded)
    chance_scores = np.random.default_rng(1).random(len(labels))
    results = shortcut_audit(frame, labels, chance_scores, tmp_path, CONFIG, seed=0)
    if confounded:
        assert results["metadata_roc_auc"] > 0.95
        assert "source_roc_auc" not in results  # no source group holds both classes
    else:
        assert 0.2 < results["metadata_roc_auc"] < 0.8
        assert results["source_roc_auc"] == pytest.approx(roc_auc_score(labels, chance_scores))
    assert "level_only_roc_auc" not in results  # lone images have no level


def test_level_bound_labels_are_explained_by_the_level_and_the_mid_levels_are_measured_apart(
    tmp_path: Path,
) -> None:
    frame, _ = _dataset(tmp_path, confounded=False, n=60)
    per_scan = 10
    frame = frame.assign(
        patient=[f"p{i // per_scan}" for i in range(60)],
        slice=[i % per_scan for i in range(60)],
        slices=per_scan,
    )
    level = levels(frame)
    np.testing.assert_allclose(level[:per_scan], np.arange(per_scan) / (per_scan - 1))
    labels = ((level > 0.4) & (level < 0.7) & (np.arange(60) // per_scan % 2 == 0)).astype(int)
    # a detector that scores the ends of the scan high, and inside the brain levels sees the lesions
    scores = np.abs(level - 0.5) + 0.3 * labels
    results = shortcut_audit(frame, labels, scores, tmp_path, CONFIG, seed=0)
    assert results["level_only_roc_auc"] > 0.7  # the level alone tells much, across patients
    middle = (level >= 0.3) & (level <= 0.9)
    assert results["mid_level_roc_auc"] == pytest.approx(roc_auc_score(labels[middle], scores[middle]))
    assert levels(frame.assign(slice=pd.NA)) is None
