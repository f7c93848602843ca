"""Seeded, leakage-free splits.

Slices of scans with patient ids are split by patient: a patient's slices all go to one split, and
training keeps only its patients' healthy slices. Lone images (no patient) are split as the method
did, made leakage-free: exact and near duplicates are grouped and a group never straddles two splits;
healthy slices go to train/val/test, tumor slices to val/test and the rest to an extra tumor-only
test set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.core.config import PatientSplit, SplitConfig
from pipeline.core.errors import DataError
from pipeline.data.classes import HEALTHY, TUMOR

SPLITS = ("train", "val", "test", "test_extra")  # the split files, in this order
HEALTHY_SPLITS = SPLITS[:3]
TUMOR_SPLITS = SPLITS[1:3]
EXTRA_SPLIT = SPLITS[3]  # the tumor slices beyond the configured sizes: a tumor-only test set


MIN_ANOMALOUS_PATIENTS = 2  # one for validation, one for test


@dataclass(frozen=True)
class SplitResult:
    assigned: pd.DataFrame  # manifest rows plus `split` and `group`
    excluded: pd.DataFrame  # manifest rows plus `reason`
    sizes: dict[str, dict[str, int]]  # the target sizes after scaling to the available data
    by_patient: bool = False


def split_counts(assigned: pd.DataFrame) -> dict[str, int]:
    """Images per split and class, e.g. {"train_healthy": 1600, "test_tumor": 200, ...}."""
    return {f"{name}_{cls}": int(n) for (name, cls), n in assigned.groupby(["split", "class"]).size().items()}


def patient_counts(assigned: pd.DataFrame) -> dict[str, int]:
    """Patients per split, e.g. {"patients_train": 12, ...} (none for lone images)."""
    known = assigned[assigned["patient"] != ""] if "patient" in assigned else assigned.iloc[:0]
    return {f"patients_{name}": int(n) for name, n in known.groupby("split")["patient"].nunique().items()}


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
    """The configured sizes for smaller data: validation and test shrink by one common factor (their
    healthy:tumor proportions stay the method's), and training takes every healthy slice they leave,
    up to its configured size, so that scarce anomalies do not throw healthy training data away."""
    healthy = {name: getattr(config.healthy, name) for name in HEALTHY_SPLITS}
    tumor = {name: getattr(config.tumor, name) for name in TUMOR_SPLITS}
    scale = min(1.0, n_healthy / sum(healthy.values()), n_tumor / sum(tumor.values()))
    held_out = {name: int(healthy[name] * scale) for name in TUMOR_SPLITS}
    sizes = {
        HEALTHY: {"train": min(healthy["train"], n_healthy - sum(held_out.values())), **held_out},
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


def splits_by_patient(manifest: pd.DataFrame, config: SplitConfig) -> bool:
    """Whether `config.by_patient` (auto: when every slice has a patient id and enough patients have
    anomalies) asks for a patient-level split of this manifest."""
    if config.by_patient == "no":
        return False
    patients = manifest["patient"] if "patient" in manifest else pd.Series("", index=manifest.index)
    anomalous = patients[manifest["class"] == TUMOR].replace("", np.nan).nunique()
    usable = bool((patients != "").all()) and anomalous >= MIN_ANOMALOUS_PATIENTS and patients.nunique() >= 3
    if config.by_patient == "yes" and not usable:
        raise DataError(
            f"split.by_patient=yes needs a patient id on every slice and at least {MIN_ANOMALOUS_PATIENTS} "
            f"patients with anomalies; this data has {int((patients == '').sum())} slices without one and "
            f"{anomalous} patients with anomalies (use split.by_patient=auto or no)"
        )
    return usable


def _patient_counts(n: int, shares: PatientSplit, at_least: dict[str, int]) -> dict[str, int]:
    """`n` patients dealt to the splits by `shares` (largest remainders), each split at least its minimum."""
    wanted = {name: n * getattr(shares, name) for name in HEALTHY_SPLITS}
    counts = {name: int(value) for name, value in wanted.items()}
    for name in sorted(wanted, key=lambda k: wanted[k] - counts[k], reverse=True)[: n - sum(counts.values())]:
        counts[name] += 1
    for name, minimum in at_least.items():
        while counts[name] < minimum:
            counts[max(counts, key=counts.get)] -= 1
            counts[name] += 1
    return counts


def split_patients(manifest: pd.DataFrame, config: SplitConfig, seed: int) -> SplitResult:
    """Whole patients to train/val/test by `config.patients`, patients with anomalies and without
    dealt separately so that validation and test both hold anomalies. Validation and test keep all
    their patients' slices; training keeps its patients' healthy slices only."""
    data = manifest.reset_index(drop=True).assign(group=lambda frame: frame["patient"])
    has_anomaly = data.groupby("patient")["class"].agg(lambda classes: bool((classes == TUMOR).any()))
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for anomalous in (True, False):
        patients = sorted(has_anomaly.index[has_anomaly == anomalous])
        at_least = {"val": 1, "test": 1} if anomalous else {}
        counts = _patient_counts(len(patients), config.patients, at_least)
        order = rng.permutation(len(patients))
        names = [name for name in HEALTHY_SPLITS for _ in range(counts[name])]
        assignment.update({patients[i]: name for i, name in zip(order, names, strict=True)})
    assigned = data.assign(split=data["patient"].map(assignment))
    left_out = (assigned["split"] == "train") & (assigned["class"] == TUMOR)
    excluded = assigned[left_out].drop(columns="split").assign(reason="anomalous slice of a training patient")
    kept = assigned[~left_out]
    if not (kept["split"] == "train").any():
        raise DataError("no healthy slice of a training patient is left: the data needs more patients")
    sizes = {cls: kept[kept["class"] == cls]["split"].value_counts().to_dict() for cls in (HEALTHY, TUMOR)}
    return SplitResult(
        kept.sort_values(["split", "path"]), excluded.sort_values("path"), sizes, by_patient=True
    )


def split(manifest: pd.DataFrame, config: SplitConfig, seed: int) -> SplitResult:
    """Split a manifest, by patient where `splits_by_patient`; same manifest, config and seed give
    the same split."""
    if splits_by_patient(manifest, config):
        return split_patients(manifest, config, seed)
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
