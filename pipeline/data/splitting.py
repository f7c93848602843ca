"""Seeded, leakage-free splits: exact and near duplicates are grouped, and a group never straddles
two splits. Healthy slices go to train/val/test; tumor slices to val/test and the rest to an extra
tumor-only test set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.config import SplitConfig
from pipeline.data.classes import HEALTHY, TUMOR
from pipeline.errors import DataError

SPLITS = ("train", "val", "test", "test_extra")  # the split files, in this order
HEALTHY_SPLITS = SPLITS[:3]
TUMOR_SPLITS = SPLITS[1:3]
EXTRA_SPLIT = SPLITS[3]  # the tumor slices beyond the configured sizes: a tumor-only test set


@dataclass(frozen=True)
class SplitResult:
    assigned: pd.DataFrame  # manifest rows plus `split` and `group`
    excluded: pd.DataFrame  # manifest rows plus `reason`
    sizes: dict[str, dict[str, int]]  # the target sizes after scaling to the available data


def split_counts(assigned: pd.DataFrame) -> dict[str, int]:
    """Images per split and class, e.g. {"train_healthy": 1600, "test_tumor": 200, ...}."""
    return {f"{name}_{cls}": int(n) for (name, cls), n in assigned.groupby(["split", "class"]).size().items()}


def _hamming_pairs(phashes: pd.Series, max_distance: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) whose 64-bit perceptual hashes differ in at most max_distance bits."""
    values = np.array([int(h, 16) for h in phashes], dtype=np.uint64)
    rows, cols = [], []
    for start in range(0, len(values), block):
        distance = np.bitwise_count(values[start : start + block, None] ^ values[None, :])
        i, j = np.nonzero(distance <= max_distance)
        i += start
        keep = i < j
        rows.append(i[keep])
        cols.append(j[keep])
    return np.concatenate(rows or [np.empty(0, int)]), np.concatenate(cols or [np.empty(0, int)])


def group_duplicates(manifest: pd.DataFrame, max_distance: int) -> np.ndarray:
    """A group id per row: rows with the same content hash or near-equal perceptual hashes, chained."""
    n = len(manifest)
    rows, cols = _hamming_pairs(manifest["phash"], max_distance)
    same_content = manifest.groupby("sha256").indices.values()
    exact = [(members[0], other) for members in same_content for other in members[1:]]
    if exact:
        rows = np.concatenate([rows, [a for a, _ in exact]])
        cols = np.concatenate([cols, [b for _, b in exact]])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _exclusions(manifest: pd.DataFrame) -> pd.Series:
    """Why a row must leave the data (empty string: it stays)."""
    reason = pd.Series("", index=manifest.index)
    groups = manifest.groupby("group")["class"].nunique()
    mixed = manifest["group"].map(groups) > 1
    reason[mixed] = "identical or near-identical to an image of the other class"
    keepers = manifest.sort_values("path").drop_duplicates("sha256")
    copies = ~manifest.index.isin(keepers.index) & ~mixed
    reason[copies] = "exact duplicate of " + manifest.loc[copies, "sha256"].map(
        keepers.set_index("sha256")["path"]
    )
    return reason


def scaled_sizes(config: SplitConfig, n_healthy: int, n_tumor: int) -> dict[str, dict[str, int]]:
    """The configured sizes, shrunk by one common factor when the data is smaller, so all
    proportions (train:val:test, healthy:tumor) stay the method's."""
    healthy = {name: getattr(config.healthy, name) for name in HEALTHY_SPLITS}
    tumor = {name: getattr(config.tumor, name) for name in TUMOR_SPLITS}
    scale = min(1.0, n_healthy / sum(healthy.values()), n_tumor / sum(tumor.values()))
    sizes = {
        HEALTHY: {k: int(v * scale) for k, v in healthy.items()},
        TUMOR: {k: int(v * scale) for k, v in tumor.items()},
    }
    empty = [f"{cls}.{name}" for cls, split in sizes.items() for name, size in split.items() if size < 1]
    if empty:
        raise DataError(
            f"too few images to split ({n_healthy} healthy, {n_tumor} tumor after "
            f"de-duplication): {', '.join(empty)} would be empty"
        )
    return sizes


def _assign(groups: list[np.ndarray], targets: dict[str, int], rest: str) -> dict[int, str]:
    """Fill the splits in order with whole groups (first fit); what fits nowhere goes to `rest`."""
    filled = dict.fromkeys(targets, 0)
    assignment: dict[int, str] = {}
    for members in groups:
        name = next((s for s, t in targets.items() if filled[s] + len(members) <= t), rest)
        if name != rest:
            filled[name] += len(members)
        assignment.update(dict.fromkeys(members.tolist(), name))
    return assignment


def split(manifest: pd.DataFrame, config: SplitConfig, seed: int) -> SplitResult:
    """Split a manifest; same manifest, config and seed give the same split."""
    data = manifest.reset_index(drop=True).assign(
        group=group_duplicates(manifest, config.near_duplicate_distance)
    )
    reason = _exclusions(data)
    excluded = data[reason != ""].assign(reason=reason[reason != ""])
    kept = data[reason == ""]
    counts = kept["class"].value_counts()
    sizes = scaled_sizes(config, int(counts.get(HEALTHY, 0)), int(counts.get(TUMOR, 0)))

    rng = np.random.default_rng(seed)
    assignment: dict[int, str] = {}
    for cls, rest in ((HEALTHY, "unused"), (TUMOR, EXTRA_SPLIT)):
        members = list(kept[kept["class"] == cls].groupby("group").indices.values())
        order = rng.permutation(len(members))
        positions = kept.index[kept["class"] == cls]
        groups = [positions.take(members[i]).to_numpy() for i in order]
        assignment.update(_assign(groups, sizes[cls], rest))

    assigned = kept.assign(split=pd.Series(assignment))
    unused = assigned["split"] == "unused"
    excluded = pd.concat(
        [excluded, assigned[unused].drop(columns="split").assign(reason="beyond the configured split sizes")]
    )
    return SplitResult(assigned[~unused].sort_values(["split", "path"]), excluded.sort_values("path"), sizes)
