"""Content normalisation: a healthy slice's score relative to healthy slices with as much brain."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.detection import normalization
from pipeline.detection.normalization import (
    ContentNormalizer,
    ReferenceNormalizer,
    SliceFacts,
    brain_content,
    load_normalizer,
)


def _facts(
    content: np.ndarray, level: np.ndarray | None = None, anatomy: np.ndarray | None = None
) -> SliceFacts:
    content = np.asarray(content, dtype=float)
    anatomy = np.zeros((len(content), 4)) if anatomy is None else anatomy
    return SliceFacts(content, anatomy, np.full(len(content), np.nan) if level is None else np.asarray(level))


def _healthy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores that fall as brain content rises (skull base and top score high), with noise."""
    rng = np.random.default_rng(seed)
    content = rng.uniform(0.1, 0.9, n)
    return content, 1.0 + 3.0 * (1.0 - content) ** 2 + rng.normal(0, 0.1, n)


def test_normalised_healthy_scores_no_longer_follow_content_and_mid_level_lesions_rank_first() -> None:
    content, scores = _healthy(400, seed=0)
    normalizer = ContentNormalizer.fit(_facts(content), scores)
    test_content, test_scores = _healthy(200, seed=1)
    normalised = normalizer.apply(test_scores, _facts(test_content))
    low, high = test_content < 0.3, test_content > 0.7
    assert abs(np.median(normalised[low]) - np.median(normalised[high])) < 1.0  # raw: ~1.6 apart, 16 spreads
    assert np.median(test_scores[low]) - np.median(test_scores[high]) > 1.0
    lesion_content = np.full(50, 0.75)
    lesions = (
        1.0 + 3.0 * 0.25**2 + 0.5 + np.random.default_rng(2).normal(0, 0.1, 50)
    )  # brain slices + a lesion
    labels = np.r_[np.zeros(200), np.ones(50)]
    raw_auc = roc_auc_score(labels, np.r_[test_scores, lesions])
    normalised_auc = roc_auc_score(
        labels, normalizer.apply(np.r_[test_scores, lesions], _facts(np.r_[test_content, lesion_content]))
    )
    assert raw_auc < 0.8 < 0.95 < normalised_auc


def test_a_normaliser_survives_its_dict_and_holds_beyond_its_range() -> None:
    content, scores = _healthy(100, seed=3)
    normalizer = ContentNormalizer.fit(_facts(content), scores)
    assert ContentNormalizer.from_dict(normalizer.as_dict()) == normalizer
    assert load_normalizer(normalizer.as_dict()) == normalizer
    unnamed = {key: value for key, value in normalizer.as_dict().items() if key != "name"}
    assert load_normalizer(unnamed) == normalizer  # saved before normalisers had names
    assert len(normalizer.contents) == 5 and list(normalizer.contents) == sorted(normalizer.contents)
    edge = normalizer.apply(np.array([2.0, 2.0]), _facts([normalizer.contents[0], -1.0]))
    assert edge[0] == pytest.approx(edge[1])
    few = ContentNormalizer.fit(_facts([0.2, 0.5, 0.8]), np.array([1.0, 1.0, 1.0]))  # flat, tiny
    assert len(few.contents) == 1 and np.isfinite(few.apply(np.array([2.0]), _facts([0.5]))).all()


def test_brain_content_is_the_soft_tissue_share_of_the_scored_region() -> None:
    images = np.zeros((2, 4, 4, 1), dtype=np.float32)
    images[0, :2, :, 0] = 0.5  # half tissue
    images[0, 2:, :, 0] = 1.0  # half bone
    images[1, :, :, 0] = 0.5
    regions = np.ones((2, 4, 4), dtype=bool)
    regions[1, :, :2] = False
    np.testing.assert_allclose(brain_content(images, regions), [0.5, 1.0])


def _scans(patients: int, slices: int, seed: int) -> tuple[SliceFacts, np.ndarray, np.ndarray]:
    """Healthy scans as on real CT: the score falls steadily up the scan while the brain content does
    not follow it (the skull base holds as much soft tissue as the middle)."""
    rng = np.random.default_rng(seed)
    level = np.tile(np.linspace(0, 1, slices), patients)
    content = rng.uniform(0.5, 0.8, level.size)
    anatomy = np.column_stack(
        [content, rng.uniform(0, 0.2, (level.size, 2)), rng.uniform(0.4, 0.6, level.size)]
    )
    scores = 3.0 - 2.5 * level + rng.normal(0, 0.15, level.size)
    patient = np.repeat(np.arange(patients), slices).astype(str)
    return SliceFacts(content, anatomy, level), scores, patient


def test_the_reference_removes_a_level_trend_that_content_cannot_see_and_lifts_upper_lesions() -> None:
    facts, scores, patients = _scans(12, 20, seed=0)
    test_facts, test_scores, _ = _scans(6, 20, seed=1)
    upper = test_facts.level > 0.6
    lesions = test_scores[upper] + 0.6  # bleeds high in the head: above their level's healthy slices only
    labels = np.r_[np.zeros(len(test_scores)), np.ones(upper.sum())]
    both = SliceFacts(
        np.r_[test_facts.content, test_facts.content[upper]],
        np.r_[test_facts.anatomy, test_facts.anatomy[upper]],
        np.r_[test_facts.level, test_facts.level[upper]],
    )
    raw = np.r_[test_scores, lesions]
    reference = ReferenceNormalizer.fit(facts, scores, patients)
    content = ContentNormalizer.fit(facts, scores)
    assert roc_auc_score(labels, content.apply(raw, both)) < 0.5  # the skull base outranks them
    assert roc_auc_score(labels, reference.apply(raw, both)) > 0.95
    healthy = reference.apply(test_scores, test_facts)
    base, top = test_facts.level < 0.2, test_facts.level > 0.8
    assert np.median(test_scores[base]) - np.median(test_scores[top]) > 10 * 0.15  # raw: ~14 spreads apart
    assert abs(np.median(healthy[base]) - np.median(healthy[top])) < 1.0  # the ends' one-sided neighbours


def test_the_reference_judges_its_own_slices_by_other_patients_and_survives_its_dict() -> None:
    facts, scores, patients = _scans(4, 10, seed=2)
    reference = ReferenceNormalizer.fit(facts, scores, patients)
    own = reference.apply(scores, facts, patients)
    shifted = scores.copy()
    shifted[patients == "0"] += 10.0  # a patient's own slices may not set its reference
    refit = ReferenceNormalizer.fit(facts, shifted, patients)
    judged_by_others = refit.apply(shifted, facts, patients)[patients == "0"]
    assert np.all(judged_by_others > own[patients == "0"] + 5)
    by_anyone = refit.apply(shifted, facts)[patients == "0"]  # no groups: its own slices among the nearest
    assert np.all(by_anyone <= judged_by_others) and np.median(by_anyone) < np.median(judged_by_others) - 5
    loaded = load_normalizer(reference.as_dict())
    assert isinstance(loaded, ReferenceNormalizer)
    lone = SliceFacts(facts.content[:3], facts.anatomy[:3], np.full(3, np.nan))  # lone slices: anatomy only
    np.testing.assert_allclose(loaded.apply(scores[:3], lone), reference.apply(scores[:3], lone))
    np.testing.assert_allclose(loaded.apply(scores, facts), reference.apply(scores, facts))


def test_the_reference_judges_in_blocks_as_it_would_all_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large test set is judged a block at a time (memory stays flat); the scores do not change."""
    facts, scores, patients = _scans(4, 10, seed=3)
    reference = ReferenceNormalizer.fit(facts, scores, patients)
    at_once = reference.apply(scores, facts, patients)
    monkeypatch.setattr(normalization, "JUDGED_AT_ONCE", 7)  # 40 slices: blocks of 7 and a remainder
    np.testing.assert_array_equal(reference.apply(scores, facts, patients), at_once)
    assert reference.apply(scores[:0], facts[np.arange(0)]).shape == (0,)


def test_calibrate_keeps_the_normaliser_validation_prefers_and_reports_both(make_settings) -> None:
    import pandas as pd

    from pipeline.data.datasets import Split
    from pipeline.detection.calibrator import choose_normalization

    facts, scores, patients = _scans(8, 10, seed=4)
    anomalous = (facts.level > 0.6) & (np.arange(len(scores)) % 3 == 0)
    scores = np.where(anomalous, scores + 0.8, scores)
    frame = pd.DataFrame(
        {
            "path": [f"p{p}/{i}.dcm" for i, p in enumerate(patients)],
            "class": np.where(anomalous, "tumor", "healthy"),
            "patient": patients,
        }
    )
    val = Split("val", frame, np.empty((len(frame), 1, 1, 1), dtype=np.float32))
    chosen = choose_normalization(
        make_settings("score.kind=l1", "score.normalize=auto", "score.features=never"),
        val,
        facts,
        {"l1": scores},
    )
    assert chosen.normalizer.name == "reference" and chosen.kind == "l1"
    assert set(chosen.by_normalizer) == {"content", "reference"}
    assert chosen.by_normalizer["reference"] > 0.95 > chosen.by_normalizer["content"]
    assert chosen.by_kind["l1"] == chosen.by_normalizer["reference"]
    content = choose_normalization(
        make_settings("score.kind=l1", "score.normalize=content"), val, facts, {"l1": scores}
    )
    assert content.normalizer.name == "content" and list(content.by_normalizer) == ["content"]
    raw = choose_normalization(
        make_settings("score.kind=l1", "score.normalize=none", "score.features=never"),
        val,
        facts,
        {"l1": scores},
    )
    assert raw.normalizer is None and raw.by_normalizer == {}
    np.testing.assert_array_equal(raw.scores["l1"], scores)
