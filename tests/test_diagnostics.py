"""Where the detector fails: per level band and per lesion kind tables on hand-made test sets with known
answers, skipped where the data has no levels or kinds, and the failure warnings firing exactly when
they should (logged, as MLflow tags that a later evaluate of the same run clears, and as 0/1 metrics)."""

from __future__ import annotations

import logging
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.utils.validation import _validate_metric_name, _validate_tag_name
from sklearn.metrics import roc_auc_score

from pipeline.evaluation.diagnostics import (
    BY_KIND_COLUMNS,
    BY_LEVEL_COLUMNS,
    LEVEL_BANDS,
    LEVEL_SHORTCUT_TAG,
    MIN_VAL_ROC_AUC,
    SEPARATION_TAG,
    UNKNOWN_KIND,
    WARNING_TAGS,
    by_kind,
    by_level,
    failure_warnings,
    flat_metrics,
    level_bands,
    slice_kinds,
    warning_flags,
)
from pipeline.evaluation.localization import pixel_metrics
from pipeline.evaluation.plots import roc_auc_by_kind, score_by_level
from pipeline.stages.evaluate import _set_warning_tags, failures

THRESHOLD = 0.5


def test_levels_fall_in_half_open_bands_and_the_top_one_is_closed() -> None:
    assert LEVEL_BANDS[0] == (0.0, 0.2) and LEVEL_BANDS[-1] == (0.9, 1.0)
    np.testing.assert_array_equal(
        level_bands(np.array([0.0, 0.19, 0.2, 0.3, 0.49, 0.5, 0.7, 0.9, 1.0, 3 / 10, 9 / 10])),
        [0, 0, 1, 2, 2, 3, 4, 5, 5, 2, 5],
    )


def _scan_slices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levels, labels and scores: the skull base (0-0.2) healthy only and scoring high; in 0.3-0.5 the
    lesions separable; in 0.5-0.7 lesions scoring like the healthy slices beside them."""
    levels = np.array([0.0, 0.1, 0.35, 0.35, 0.4, 0.4, 0.6, 0.6, 0.6, 0.6])
    labels = np.array([0, 0, 0, 0, 1, 1, 0, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.8, 0.3, 0.4, 0.3, 0.4])
    return levels, labels, scores


def test_per_band_metrics_have_known_answers() -> None:
    table = by_level(*_scan_slices(), THRESHOLD).set_index("band")
    assert list(table.reset_index().columns) == BY_LEVEL_COLUMNS
    assert list(table.index) == ["0-0.2", "0.2-0.3", "0.3-0.5", "0.5-0.7", "0.7-0.9", "0.9-1"]
    base, separable, blind = table.loc["0-0.2"], table.loc["0.3-0.5"], table.loc["0.5-0.7"]
    assert (base["healthy"], base["anomalous"]) == (2, 0)
    assert np.isnan(base["roc_auc"]) and np.isnan(base["recall"]) and np.isnan(base["median_anomalous_score"])
    assert base["false_positive_rate"] == 1.0 and base["median_healthy_score"] == pytest.approx(0.85)
    assert (separable["roc_auc"], separable["recall"], separable["false_positive_rate"]) == (1.0, 1.0, 0.0)
    assert separable["median_anomalous_score"] == pytest.approx(0.75)
    assert (blind["roc_auc"], blind["recall"], blind["false_positive_rate"]) == (0.5, 0.0, 0.0)
    assert table.loc["0.2-0.3", ["healthy", "anomalous"]].tolist() == [0, 0]


def test_lone_images_have_no_band_rows() -> None:
    _, labels, scores = _scan_slices()
    table = by_level(None, labels, scores, THRESHOLD)
    assert table.empty and list(table.columns) == BY_LEVEL_COLUMNS


def test_kinds_come_from_the_anomalous_slices_and_are_skipped_where_absent() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    frame = pd.DataFrame({"kind": ["", np.nan, "subdural", " ", "intraventricular"]})
    np.testing.assert_array_equal(
        slice_kinds(frame, labels), ["", "", "subdural", UNKNOWN_KIND, "intraventricular"]
    )
    assert slice_kinds(frame.drop(columns="kind"), labels) is None
    assert slice_kinds(frame.assign(kind=""), labels) is None
    assert slice_kinds(frame.assign(kind=np.nan), labels) is None
    assert slice_kinds(frame.assign(kind=["subdural", "", "", "", ""]), labels) is None  # healthy only
    table = by_kind(None, labels, np.arange(5.0), THRESHOLD)
    assert table.empty and list(table.columns) == BY_KIND_COLUMNS


def test_per_kind_metrics_against_all_healthy_slices() -> None:
    """Subdural bleeds score like healthy slices (0.5), intraventricular ones above all of them (1.0)."""
    healthy = np.array([0.1, 0.2, 0.3, 0.4])
    scores = np.concatenate([healthy, healthy, [0.8, 0.9]])
    labels = np.array([0] * 4 + [1] * 6)
    kinds = np.array([""] * 4 + ["subdural"] * 4 + ["intraventricular"] * 2)
    table = by_kind(kinds, labels, scores, THRESHOLD).set_index("kind")
    assert list(table.index) == ["intraventricular", "subdural"]
    assert table.loc["subdural", "roc_auc"] == 0.5 and table.loc["intraventricular", "roc_auc"] == 1.0
    assert table.loc["subdural", "recall"] == 0.0 and table.loc["intraventricular", "recall"] == 1.0
    assert table["slices"].tolist() == [2, 4] and table["healthy"].tolist() == [4, 4]
    assert table["dice"].isna().all()  # no outlines
    overall = roc_auc_score(labels, scores)
    assert table.loc["subdural", "roc_auc"] < overall < table.loc["intraventricular", "roc_auc"]


def test_per_kind_dice_is_the_localisation_dice_of_that_kinds_slices() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 1])
    kinds = np.array(["", "", "epidural", "tumor", "epidural"])
    maps = rng.random((3, 8, 8))
    outlines = rng.random((3, 8, 8)) > 0.7
    table = by_kind(kinds, labels, np.arange(5.0), THRESHOLD, maps, outlines, 0.6).set_index("kind")
    epidural = [0, 2]
    assert table.loc["epidural", "dice"] == pytest.approx(
        pixel_metrics(maps[epidural], outlines[epidural], 0.6)["dice"]
    )
    assert table.loc["tumor", "dice"] == pytest.approx(pixel_metrics(maps[[1]], outlines[[1]], 0.6)["dice"])


def test_flat_metric_names_suit_mlflow_and_dvc_and_leave_out_nan() -> None:
    kinds = np.array([""] * 4 + ["intra-parenchymal"] * 2 + ["subdural"] * 4)
    levels, labels, scores = _scan_slices()
    metrics = flat_metrics(
        by_level(levels, labels, scores, THRESHOLD), by_kind(kinds, labels, scores, THRESHOLD)
    )
    assert metrics["level_30_50_roc_auc"] == 1.0 and metrics["level_50_70_roc_auc"] == 0.5
    assert metrics["level_0_20_false_positive_rate"] == 1.0
    assert "level_0_20_roc_auc" not in metrics  # no anomalies there
    assert "level_90_100_recall" not in metrics  # an empty band
    assert {"kind_intra_parenchymal_roc_auc", "kind_subdural_recall"} <= set(metrics)
    assert all(np.isfinite(value) for value in metrics.values())
    for name in [*metrics, *warning_flags({})]:
        assert re.fullmatch(r"[a-z0-9_]+", name), name  # no dot: DVC would read it as nesting
        _validate_metric_name(f"test_{name}")
    for tag in WARNING_TAGS:
        _validate_tag_name(tag)


@pytest.mark.parametrize(
    ("validation", "fires"),
    [(0.69, True), (MIN_VAL_ROC_AUC, False), (0.95, False), (None, False), (float("nan"), False)],
)
def test_the_separation_warning_fires_below_the_minimum_validation_roc_auc(
    validation: float | None, fires: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.evaluate"):
        warnings = failures({"roc_auc": 0.9}, validation)
    assert (SEPARATION_TAG in warnings) is fires and LEVEL_SHORTCUT_TAG not in warnings
    assert warning_flags(warnings) == {"warning_separation": int(fires), "warning_level_shortcut": 0}
    message = "this detector does not separate this data's classes (validation ROC AUC 0.690 < 0.70)"
    assert (message in caplog.text) is fires
    if fires:
        assert warnings[SEPARATION_TAG] == message


@pytest.mark.parametrize(
    ("level_only", "fires"), [(0.8, True), (0.75, False), (0.6, False), (None, False), (float("nan"), False)]
)
def test_the_level_warning_fires_when_the_level_alone_beats_the_detector(
    level_only: float | None, fires: bool, caplog: pytest.LogCaptureFixture
) -> None:
    results = {"roc_auc": 0.75} | ({} if level_only is None else {"level_only_roc_auc": level_only})
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.evaluate"):
        warnings = failures(results, 0.9)
    assert list(warnings) == ([LEVEL_SHORTCUT_TAG] if fires else [])
    assert warning_flags(warnings)["warning_level_shortcut"] == int(fires)
    assert ("the slice's level alone (ROC AUC 0.800) beats the detector (0.750)" in caplog.text) is fires
    assert failure_warnings(results, 0.9) == warnings  # the decision alone, pure


def test_warning_tags_follow_the_latest_evaluate_of_a_run(tmp_path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    both = failure_warnings({"roc_auc": 0.6, "level_only_roc_auc": 0.9}, 0.6)
    assert set(both) == set(WARNING_TAGS)
    with mlflow.start_run() as run:
        _set_warning_tags(both)
    with mlflow.start_run(run_id=run.info.run_id):  # evaluate again, the separation fixed
        _set_warning_tags({LEVEL_SHORTCUT_TAG: both[LEVEL_SHORTCUT_TAG]})
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert SEPARATION_TAG not in tags and tags[LEVEL_SHORTCUT_TAG] == both[LEVEL_SHORTCUT_TAG]


def test_band_and_kind_figures_draw() -> None:
    levels, labels, scores = _scan_slices()
    bands = by_level(levels, labels, scores, THRESHOLD)
    figure = score_by_level(levels, labels, scores, THRESHOLD, bands=bands)
    assert len(figure.axes[0].collections) >= 4  # two scatters, two sets of band medians
    kinds = np.array([""] * 4 + ["subdural"] * 4 + ["intraventricular"] * 2)
    table = by_kind(kinds, labels, scores, THRESHOLD)
    assert len(roc_auc_by_kind(table, 0.8).axes[0].patches) == 2
