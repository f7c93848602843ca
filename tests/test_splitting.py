"""Splits: seeded, sized like the method's, and leakage-free (no image or near copy in two splits)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import SplitConfig
from pipeline.core.errors import DataError
from pipeline.data.splitting import EXTRA_SPLIT, group_duplicates, patient_counts, scaled_sizes, split

CONFIG = SplitConfig.model_validate(
    {
        "healthy": {"train": 1600, "val": 200, "test": 200},
        "tumor": {"val": 200, "test": 200},
        "near_duplicate_distance": 2,
        "by_patient": "auto",
        "patients": {"train": 0.6, "val": 0.2, "test": 0.2},
    }
)


def _manifest(n_healthy: int, n_tumor: int, seed: int = 0) -> pd.DataFrame:
    """Rows with random (so far apart) perceptual hashes and unique content hashes."""
    rng = np.random.default_rng(seed)
    n = n_healthy + n_tumor
    return pd.DataFrame(
        {
            "path": [f"{'Healthy' if i < n_healthy else 'Tumor'}/{i}.png" for i in range(n)],
            "class": ["healthy"] * n_healthy + ["tumor"] * n_tumor,
            "sha256": [f"{i:064x}" for i in range(n)],
            "phash": [f"{int(v):016x}" for v in rng.integers(0, 2**63, n, dtype=np.int64)],
        }
    )


def _flip_bits(phash: str, bits: int, offset: int = 0) -> str:
    return f"{int(phash, 16) ^ (((1 << bits) - 1) << offset):016x}"


def test_the_methods_sizes_on_data_of_the_methods_size() -> None:
    result = split(_manifest(2000, 1200), CONFIG, seed=1)
    sizes = result.assigned.groupby(["class", "split"]).size().to_dict()
    assert sizes == {
        ("healthy", "train"): 1600,
        ("healthy", "val"): 200,
        ("healthy", "test"): 200,
        ("tumor", "val"): 200,
        ("tumor", "test"): 200,
        ("tumor", EXTRA_SPLIT): 800,
    }


def test_smaller_data_keeps_the_proportions() -> None:
    sizes = scaled_sizes(CONFIG, n_healthy=600, n_tumor=200)
    assert sizes == {"healthy": {"train": 480, "val": 60, "test": 60}, "tumor": {"val": 60, "test": 60}}


def test_scarce_tumors_do_not_throw_healthy_training_slices_away() -> None:
    """221 tumor slices shrink validation and test; training still takes every healthy slice left."""
    sizes = scaled_sizes(CONFIG, n_healthy=1641, n_tumor=221)
    assert sizes == {"healthy": {"train": 1421, "val": 110, "test": 110}, "tumor": {"val": 110, "test": 110}}


def _scans(patients: int, slices: int = 10, anomalous_every: int = 2) -> pd.DataFrame:
    """`patients` scans of `slices` slices; every `anomalous_every`-th patient has 3 anomalous slices."""
    rows, rng = [], np.random.default_rng(0)
    for p in range(patients):
        for k in range(slices):
            tumor = p % anomalous_every == 0 and 4 <= k < 7
            rows.append(
                {
                    "path": f"{'Tumor' if tumor else 'Healthy'}/p{p}/scan_z{k:03d}.dcm",
                    "class": "tumor" if tumor else "healthy",
                    "sha256": f"{p * 100 + k:064x}",
                    "phash": f"{int(rng.integers(0, 2**63)):016x}",
                    "patient": f"p{p}",
                    "series": f"s{p}",
                    "slice": k,
                    "slices": slices,
                }
            )
    return pd.DataFrame(rows)


def test_slices_of_scans_are_split_by_patient() -> None:
    result = split(_scans(10), CONFIG, seed=0)
    assigned = result.assigned
    assert result.by_patient
    assert (assigned.groupby("patient")["split"].nunique() == 1).all()  # a patient sits in one split
    assert set(assigned.loc[assigned["split"] == "train", "class"]) == {"healthy"}
    for name in ("val", "test"):
        assert set(assigned.loc[assigned["split"] == name, "class"]) == {"healthy", "tumor"}
    train_patients = set(assigned.loc[assigned["split"] == "train", "patient"])
    assert set(result.excluded["patient"]) <= train_patients
    assert (result.excluded["reason"] == "anomalous slice of a training patient").all()
    assert patient_counts(assigned) == {"patients_train": 6, "patients_val": 2, "patients_test": 2}
    pd.testing.assert_frame_equal(assigned, split(_scans(10), CONFIG, seed=0).assigned)


def test_a_slice_without_patient_keeps_the_image_split_unless_asked() -> None:
    scans = _scans(10)
    scans.loc[0, "patient"] = ""
    assert not split(scans, CONFIG, seed=0).by_patient
    with pytest.raises(
        DataError, match=r"by_patient=yes needs a patient id on every slice.*1 slices without"
    ):
        split(scans, CONFIG.model_copy(update={"by_patient": "yes"}), seed=0)
    assert not split(_scans(10), CONFIG.model_copy(update={"by_patient": "no"}), seed=0).by_patient


def test_too_little_data_is_an_error() -> None:
    with pytest.raises(DataError, match="too few images"):
        scaled_sizes(CONFIG, n_healthy=5, n_tumor=1)


def test_same_seed_same_split_other_seed_other_split() -> None:
    manifest = _manifest(300, 100)
    first, again, other = (split(manifest, CONFIG, seed=s).assigned for s in (3, 3, 4))
    pd.testing.assert_frame_equal(first, again)
    by_path = [frame.set_index("path")["split"].sort_index() for frame in (first, other)]
    assert (by_path[0] != by_path[1]).any()


def test_exact_and_near_duplicates_never_straddle_splits() -> None:
    manifest = _manifest(300, 100)
    for i in range(0, 60, 3):  # healthy near copies (2 bits apart) and exact copies
        manifest.loc[i + 1, "phash"] = _flip_bits(manifest.loc[i, "phash"], 2)
        manifest.loc[i + 2, ["sha256", "phash"]] = manifest.loc[i, ["sha256", "phash"]]
    result = split(manifest, CONFIG, seed=0)
    assigned = result.assigned
    assert assigned["sha256"].is_unique
    copies = result.excluded[result.excluded["reason"].str.startswith("exact duplicate of")]
    assert len(copies) == 20
    groups = group_duplicates(assigned, CONFIG.near_duplicate_distance)
    assert (pd.Series(assigned["split"].to_numpy()).groupby(groups).nunique() == 1).all()


def test_copies_across_classes_are_excluded_as_ambiguous() -> None:
    manifest = _manifest(100, 40)
    manifest.loc[120, ["sha256", "phash"]] = manifest.loc[0, ["sha256", "phash"]]
    result = split(manifest, CONFIG, seed=0)
    ambiguous = result.excluded[result.excluded["reason"].str.contains("other class")]
    assert sorted(ambiguous["path"]) == ["Healthy/0.png", "Tumor/120.png"]
    assert not result.assigned["path"].isin(ambiguous["path"]).any()


def test_groups_chain_through_near_copies() -> None:
    manifest = _manifest(3, 0)
    manifest.loc[1, "phash"] = _flip_bits(manifest.loc[0, "phash"], 2)
    manifest.loc[2, "phash"] = _flip_bits(manifest.loc[1, "phash"], 2, offset=8)  # 4 bits from row 0
    groups = group_duplicates(manifest, 2)
    assert groups[0] == groups[1] == groups[2]
    assert len(set(group_duplicates(manifest, 0))) == 3
