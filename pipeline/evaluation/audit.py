"""What besides anatomy could explain a detection result: the images' sources and the slices' levels.

A dataset whose classes come from different scanners or exports can be told apart by file size, format
or brightness alone; a scan's lowest and highest slices (skull base, skull top) hold little brain and
score high whatever they show. Each check here puts a number on one such explanation, on the test set
itself, so a report shows it beside the detector's own result:

- `metadata_roc_auc`: a classifier that sees only file-level facts (bytes per pixel, format, mode,
  width, height, mean intensity, foreground fraction), cross-validated on the test slices (folds keep a
  patient's slices together); `metadata_score_roc_auc`: the same with the detector's score added;
- `source_roc_auc`: the detector inside the largest source group (format, mode, size) with both classes;
- `level_only_roc_auc`: a classifier that sees only the slice's level in its scan (0 lowest, 1 highest);
  `mid_level_roc_auc`: the detector among slices between MID_LEVELS, where the brain is.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

from pipeline.core.config import PreprocessConfig
from pipeline.data.images import DECODE_WORKERS, decode
from pipeline.data.manifest import frame_levels
from pipeline.evaluation.metrics import size_groups

FOREGROUND = 0.05  # a pixel brighter than this (of full scale) is not background
MID_LEVELS = (0.3, 0.9)  # of a scan's height: where its slices hold brain
FOLDS = 5


def _file_facts(path: Path, config: PreprocessConfig) -> tuple[float, float, float]:
    """Bytes per pixel, mean intensity and foreground fraction of one file."""
    decoded = decode(path, config)
    pixels = decoded.pixels
    return path.stat().st_size / pixels.size, float(pixels.mean()), float((pixels > FOREGROUND).mean())


def metadata_features(frame: pd.DataFrame, raw_dir: Path, config: PreprocessConfig) -> pd.DataFrame:
    """What a shortcut could key on, per slice of `frame` (a split's manifest rows)."""
    with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as pool:
        facts = list(pool.map(lambda path: _file_facts(raw_dir / path, config), frame["path"]))
    features = pd.DataFrame(facts, columns=["bytes_per_pixel", "mean_intensity", "foreground"])
    features["log_width"] = np.log(frame["width"].to_numpy(dtype=float))
    features["log_height"] = np.log(frame["height"].to_numpy(dtype=float))
    categories = pd.get_dummies(frame[["format", "mode"]].reset_index(drop=True), dtype=float)
    return pd.concat([features, categories], axis=1)


def cross_validated_auc(features: pd.DataFrame, labels: np.ndarray, groups: np.ndarray, seed: int) -> float:
    """ROC AUC of a gradient-boosted classifier's out-of-fold probabilities; NaN when a class has fewer
    slices (or groups) than folds."""
    folds = min(FOLDS, *(len(np.unique(groups[labels == label])) for label in (0, 1)))
    if folds < 2:
        return float("nan")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    model = HistGradientBoostingClassifier(max_iter=100, max_depth=3, min_samples_leaf=5, random_state=seed)
    probabilities = cross_val_predict(
        model, features, labels, groups=groups, cv=splitter, method="predict_proba"
    )[:, 1]
    return float(roc_auc_score(labels, probabilities))


def _groups(frame: pd.DataFrame) -> np.ndarray:
    """A slice's patient where known, else the slice itself: folds never split a patient."""
    patients = frame["patient"].fillna("") if "patient" in frame else pd.Series("", index=frame.index)
    return np.where(patients != "", patients, frame["path"]).astype(str)


def source_groups(frame: pd.DataFrame) -> pd.Series:
    """A slice's source: its format, mode and (common) size."""
    sizes = size_groups(frame["width"], frame["height"])
    return frame["format"].astype(str) + " " + frame["mode"].astype(str) + " " + sizes.astype(str)


def largest_mixed_source(frame: pd.DataFrame, labels: np.ndarray) -> str | None:
    """The largest source group holding both classes (None if there is none)."""
    groups = source_groups(frame.reset_index(drop=True))
    mixed = [
        (int((groups == group).sum()), group)
        for group in groups.unique()
        if len(np.unique(labels[(groups == group).to_numpy()])) == 2
    ]
    return max(mixed)[1] if mixed else None


def levels(frame: pd.DataFrame) -> np.ndarray | None:
    """Each slice's level in its scan (`manifest.frame_levels`), or None unless every slice has one."""
    values = frame_levels(frame)
    return values if np.isfinite(values).all() else None


def _roc_auc_where(inside: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    both = len(np.unique(labels[inside])) == 2
    return float(roc_auc_score(labels[inside], scores[inside])) if both else float("nan")


def shortcut_audit(
    frame: pd.DataFrame,
    labels: np.ndarray,
    scores: np.ndarray,
    raw_dir: Path,
    config: PreprocessConfig,
    seed: int,
) -> dict[str, float]:
    """The audit's metrics for the test slices in `frame` (a split's manifest rows) and their scores."""
    frame = frame.reset_index(drop=True)
    groups = _groups(frame)
    features = metadata_features(frame, raw_dir, config)
    results = {
        "metadata_roc_auc": cross_validated_auc(features, labels, groups, seed),
        "metadata_score_roc_auc": cross_validated_auc(features.assign(score=scores), labels, groups, seed),
    }
    source = largest_mixed_source(frame, labels)
    if source is not None:
        results["source_roc_auc"] = _roc_auc_where(
            (source_groups(frame) == source).to_numpy(), labels, scores
        )
    level = levels(frame)
    if level is not None:
        results["level_only_roc_auc"] = cross_validated_auc(
            pd.DataFrame({"level": level}), labels, groups, seed
        )
        middle = (level >= MID_LEVELS[0]) & (level <= MID_LEVELS[1])
        results["mid_level_roc_auc"] = _roc_auc_where(middle, labels, scores)
    return results
