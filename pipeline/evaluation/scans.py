"""Scan-level results: a scan (a volume, one series) is as anomalous as its most anomalous slices.

A scan's score is the maximum of its slice scores, and the mean of its `top_k` highest (steadier
against one noisy slice); a scan is labelled anomalous when any of its slices is. The table keeps the
slice that drove each scan's score, so a reader can look at it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import ranking_metrics

SCAN_COLUMNS = [
    "series",
    "patient",
    "slices",
    "anomalous_slices",
    "label",
    "max_score",
    "top_k_score",
    "top_slice",
]


def scan_table(frame: pd.DataFrame, labels: np.ndarray, scores: np.ndarray, top_k: int) -> pd.DataFrame:
    """One row per scan among the slices (rows of a split with `series`); none for lone images."""
    if "series" not in frame:
        return pd.DataFrame(columns=SCAN_COLUMNS)
    slices = frame.assign(label=labels, score=scores)
    slices = slices[slices["series"] != ""].sort_values("score", ascending=False, kind="stable")
    rows = [
        {
            "series": series,
            "patient": scan["patient"].iloc[0],
            "slices": len(scan),
            "anomalous_slices": int(scan["label"].sum()),
            "label": int(scan["label"].any()),
            "max_score": float(scan["score"].iloc[0]),
            "top_k_score": float(scan["score"].iloc[:top_k].mean()),
            "top_slice": scan["path"].iloc[0],
        }
        for series, scan in slices.groupby("series", sort=True)
    ]
    return pd.DataFrame(rows, columns=SCAN_COLUMNS)


def scan_metrics(table: pd.DataFrame) -> dict[str, float]:
    """How well the scan scores rank anomalous scans above clean ones (where both kinds exist)."""
    results: dict[str, float] = {"scans": len(table), "anomalous_scans": int(table["label"].sum())}
    if 0 < results["anomalous_scans"] < len(table):
        labels = table["label"].to_numpy(dtype=np.int64)
        results["scan_roc_auc"] = ranking_metrics(labels, table["max_score"].to_numpy())["roc_auc"]
        results["scan_roc_auc_top_k"] = ranking_metrics(labels, table["top_k_score"].to_numpy())["roc_auc"]
    return results
