"""Report figures for the evaluate stage (error histograms, ROC/PR, confusion matrix, reconstructions,
score by slice level and level band, ROC AUC by lesion kind)
and for comparisons of several runs (ROC overlay, histogram panels).

Figures are built with matplotlib's object-oriented API (`Figure`, no pyplot), as matplotlib
recommends for servers: rendering needs no display or backend choice (PNG output always goes
through Agg), nothing is registered in pyplot's global figure list, so nothing leaks or needs
closing, and importing this module never switches the backend of a caller that uses pyplot.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.core.arrays import finite_1d, finite_number
from pipeline.core.io import atomic_path
from pipeline.data.classes import CLASSES
from pipeline.evaluation.metrics import pr_curve_table, roc_curve_table

HISTOGRAM_BINS = 30
SAVE_DPI = 150


def error_histogram(errors: dict[str, np.ndarray], threshold: float, title: str) -> Figure:
    """Overlay each group's reconstruction errors on shared bins, with the decision threshold."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    draw_error_histogram(fig.add_subplot(), errors, threshold, title)
    return fig


def draw_error_histogram(ax: Axes, errors: dict[str, np.ndarray], threshold: float, title: str) -> None:
    """`error_histogram` on a given axis (one panel of a comparison).

    Histograms are density-normalised so groups of different sizes compare by shape;
    group sizes are given in the legend. The bins span the threshold so its line is in view.
    """
    if not errors:
        raise ValueError("errors needs at least one named group, e.g. {'healthy': ..., 'tumor': ...}")
    threshold = finite_number(threshold)
    groups = {name: finite_1d(np.ravel(values), f"errors[{name!r}]") for name, values in errors.items()}
    all_values = np.concatenate(list(groups.values()))
    bin_edges = np.histogram_bin_edges(
        all_values,
        bins=HISTOGRAM_BINS,
        range=(min(all_values.min(), threshold), max(all_values.max(), threshold)),
    )
    for name, values in groups.items():
        ax.hist(values, bins=bin_edges, density=True, alpha=0.5, label=f"{name} (n={values.size})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold = {threshold:.4g}")
    ax.set_xlabel("reconstruction error")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()


def histogram_panels(panels: dict[str, tuple[dict[str, np.ndarray], float]], columns: int = 3) -> Figure:
    """One error histogram per entry (title -> (groups, threshold)), side by side in a grid."""
    if not panels:
        raise ValueError("histogram_panels needs at least one panel")
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(5 * columns, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (title, (errors, threshold)) in zip(axes, panels.items(), strict=False):
        draw_error_histogram(ax, errors, threshold, title)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig


def roc_overlay(curves: dict[str, pd.DataFrame]) -> Figure:
    """ROC curves of several models on one axis; each label -> a table with columns fpr, tpr."""
    if not curves:
        raise ValueError("roc_overlay needs at least one curve")
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for label, curve in curves.items():
        ax.plot(curve["fpr"], curve["tpr"], label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="ROC curves on the test set",
        aspect="equal",
    )
    ax.legend(loc="lower right", fontsize="small")
    return fig


def score_by_level(
    levels: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    bands: pd.DataFrame | None = None,
) -> Figure:
    """Each test slice's score against its level in its scan: a detector that scores the level (skull
    base, skull top) rather than the lesion shows healthy slices climbing at both ends. With `bands`
    (`pipeline.evaluation.diagnostics.by_level`), each class's median score per level band as a bar across the
    band, and the band's ROC AUC along the top: where the classes' medians meet, the detector is blind."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for label, name in enumerate(CLASSES):
        chosen = labels == label
        points = ax.scatter(
            levels[chosen], scores[chosen], s=12, alpha=0.6, label=f"{name} (n={int(chosen.sum())})"
        )
        if bands is not None and len(bands):
            column = "median_healthy_score" if label == 0 else "median_anomalous_score"
            ax.hlines(
                bands[column], bands["low"], bands["high"], colors=points.get_facecolor()[:1], linewidth=2.5
            )
    if bands is not None and len(bands):
        for row in bands.itertuples(index=False):
            if np.isfinite(row.roc_auc):
                ax.text(
                    (row.low + row.high) / 2,
                    1.0,
                    f"{row.roc_auc:.2f}",
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="bottom",
                    fontsize="small",
                )
        ax.vlines(
            bands["low"].iloc[1:],
            0,
            1,
            transform=ax.get_xaxis_transform(),
            colors="grey",
            linestyles=":",
            linewidth=0.8,
        )
    ax.axhline(finite_number(threshold), color="black", linestyle="--", label="threshold")
    ax.set_xlabel("level in the scan (0 = lowest slice, 1 = highest)")
    ax.set_ylabel("anomaly score")
    banded = bands is not None and len(bands) > 0
    ax.set_title(
        "score by slice level" + (" (bars: band medians; above: band ROC AUC)" if banded else ""),
        pad=16 if banded else None,
    )
    ax.legend()
    return fig


def roc_auc_by_kind(kinds: pd.DataFrame, overall: float) -> Figure:
    """Each lesion kind's ROC AUC against all healthy test slices (`pipeline.evaluation.diagnostics.by_kind`),
    with its slice count and recall, beside the detector's overall ROC AUC and chance."""
    fig = Figure(figsize=(7, 0.5 + 0.45 * max(len(kinds), 2)), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(len(kinds))
    ax.barh(positions, kinds["roc_auc"].fillna(0), color="tab:orange")
    ax.set_yticks(
        positions,
        labels=[f"{row.kind} (n={row.slices}, recall {row.recall:.0%})" for row in kinds.itertuples()],
    )
    ax.axvline(0.5, color="grey", linestyle=":", label="chance")
    ax.axvline(overall, color="black", linestyle="--", label=f"all anomalies ({overall:.3f})")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("ROC AUC against all healthy test slices")
    ax.set_title("detection by lesion kind")
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    return fig


def roc_pr_figure(labels: np.ndarray, scores: np.ndarray) -> Figure:
    """ROC and precision-recall curves side by side, each with its summary and chance level.

    Curves come from the same tables that are written for `dvc plots`, so the PNG and the
    interactive plots agree.
    """
    roc_table = roc_curve_table(labels, scores)
    pr_table = pr_curve_table(labels, scores)
    roc_auc = roc_auc_score(labels, scores)
    average_precision = average_precision_score(labels, scores)
    prevalence = float(np.mean(np.asarray(labels) == 1))

    fig = Figure(figsize=(11, 5), layout="constrained")
    roc_axis, pr_axis = fig.subplots(1, 2)

    roc_axis.plot(roc_table["fpr"], roc_table["tpr"], label=f"ROC (AUC = {roc_auc:.3f})")
    roc_axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance (AUC = 0.5)")
    roc_axis.set_xlabel("false positive rate (1 - specificity)")
    roc_axis.set_ylabel("true positive rate (recall)")
    roc_axis.set_title("ROC curve")
    roc_axis.legend(loc="lower right")

    # steps-pre: precision over (recall[i-1], recall[i]] is precision[i], the step function AP sums.
    pr_axis.plot(
        pr_table["recall"],
        pr_table["precision"],
        drawstyle="steps-pre",
        label=f"precision-recall (AP = {average_precision:.3f})",
    )
    pr_axis.axhline(prevalence, linestyle="--", color="grey", label=f"chance (prevalence = {prevalence:.2f})")
    pr_axis.set_xlabel("recall (tumor detection rate)")
    pr_axis.set_ylabel("precision")
    pr_axis.set_title("Precision-recall curve")
    pr_axis.legend(loc="best")

    for ax in (roc_axis, pr_axis):
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    return fig


def confusion_figure(tn: int, fp: int, fn: int, tp: int) -> Figure:
    """2x2 confusion matrix (rows actual, columns predicted), each cell with its count and row share.

    Row shares are specificity / false positive rate (healthy row) and miss rate / recall (tumor row).
    """
    matrix = np.array([[tn, fp], [fn, tp]])
    if np.any(matrix < 0):
        raise ValueError(f"confusion counts must be non-negative, got tn={tn}, fp={fp}, fn={fn}, tp={tp}")
    row_totals = matrix.sum(axis=1, keepdims=True)
    row_shares = np.divide(matrix, row_totals, out=np.zeros(matrix.shape), where=row_totals > 0)

    fig = Figure(figsize=(4.8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    for row in range(2):
        for column in range(2):
            is_dark_cell = matrix[row, column] > matrix.max() / 2
            ax.text(
                column,
                row,
                f"{matrix[row, column]}\n({row_shares[row, column]:.1%})",
                ha="center",
                va="center",
                fontsize=13,
                color="white" if is_dark_cell else "black",
            )
    ax.set_xticks([0, 1], labels=CLASSES)
    ax.set_yticks([0, 1], labels=CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("Confusion matrix")
    return fig


def _image_stack(array: np.ndarray, name: str) -> np.ndarray:
    """Accept (n, H, W) or (n, H, W, channels) batches, as Keras produces them: channel 0 is shown
    (the brain window, where `preprocess.extra_windows` adds more)."""
    stack = np.asarray(array, dtype=np.float64)
    if stack.ndim == 4 and stack.shape[-1] >= 1:
        stack = stack[..., 0]
    if stack.ndim != 3 or stack.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (n, H, W) or (n, H, W, channels) with n >= 1, got {np.shape(array)}"
        )
    return stack


def reconstruction_grid(
    images: np.ndarray, reconstructions: np.ndarray, residual_maps: np.ndarray, labels: list[str]
) -> Figure:
    """One row per slice: input, reconstruction and its residual heat map (the detector's: smoothed,
    zero outside the head) laid over the slice, opaque where the error is high, so where the model
    fails is seen on the anatomy.

    All residual maps share one colour scale, so rows (e.g. healthy vs tumor) compare directly.
    """
    input_stack = _image_stack(images, "images")
    reconstruction_stack = _image_stack(reconstructions, "reconstructions")
    residuals = _image_stack(residual_maps, "residual_maps")
    if not input_stack.shape == reconstruction_stack.shape == residuals.shape:
        raise ValueError(
            f"images, reconstructions and residual maps differ in shape: {input_stack.shape}, "
            f"{reconstruction_stack.shape}, {residuals.shape}"
        )
    if len(labels) != input_stack.shape[0]:
        raise ValueError(f"got {len(labels)} labels for {input_stack.shape[0]} images")
    residual_max = max(float(residuals.max()), np.finfo(np.float64).eps)

    row_count = input_stack.shape[0]
    fig = Figure(figsize=(9, 3 * row_count), layout="constrained")
    axes = fig.subplots(row_count, 3, squeeze=False)
    for row, (image, reconstruction, residual, label) in enumerate(
        zip(input_stack, reconstruction_stack, residuals, labels, strict=True)
    ):
        input_axis, reconstruction_axis, residual_axis = axes[row]
        input_axis.imshow(image, cmap="gray", vmin=0, vmax=1)
        reconstruction_axis.imshow(reconstruction, cmap="gray", vmin=0, vmax=1)
        residual_axis.imshow(image, cmap="gray", vmin=0, vmax=1)
        residual_image = residual_axis.imshow(
            residual, cmap="inferno", vmin=0, vmax=residual_max, alpha=np.clip(residual / residual_max, 0, 1)
        )
        fig.colorbar(residual_image, ax=residual_axis, label="|error|")
        input_axis.set_ylabel(label)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, column_title in zip(axes[0], ("input", "reconstruction", "residual on input"), strict=True):
        ax.set_title(column_title)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Write fig as a PNG atomically, so DVC or MLflow never pick up a half-written file."""
    with atomic_path(path) as temporary_path:
        fig.savefig(temporary_path, format="png", dpi=SAVE_DPI)
