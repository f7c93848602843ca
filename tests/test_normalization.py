"""Content normalisation: a healthy slice's score relative to healthy slices with as much brain."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.normalization import ContentNormalizer, brain_content


def _healthy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores that fall as brain content rises (skull base and top score high), with noise."""
    rng = np.random.default_rng(seed)
    content = rng.uniform(0.1, 0.9, n)
    return content, 1.0 + 3.0 * (1.0 - content) ** 2 + rng.normal(0, 0.1, n)


def test_normalised_healthy_scores_no_longer_follow_content_and_mid_level_lesions_rank_first() -> None:
    content, scores = _healthy(400, seed=0)
    normalizer = ContentNormalizer.fit(content, scores)
    test_content, test_scores = _healthy(200, seed=1)
    normalised = normalizer.apply(test_scores, test_content)
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
        labels, normalizer.apply(np.r_[test_scores, lesions], np.r_[test_content, lesion_content])
    )
    assert raw_auc < 0.8 < 0.95 < normalised_auc


def test_a_normaliser_survives_its_dict_and_holds_beyond_its_range() -> None:
    normalizer = ContentNormalizer.fit(*_healthy(100, seed=3))
    assert ContentNormalizer.from_dict(normalizer.as_dict()) == normalizer
    assert len(normalizer.contents) == 5 and list(normalizer.contents) == sorted(normalizer.contents)
    edge = normalizer.apply(np.array([2.0, 2.0]), np.array([normalizer.contents[0], -1.0]))
    assert edge[0] == pytest.approx(edge[1])
    few = ContentNormalizer.fit(np.array([0.2, 0.5, 0.8]), np.array([1.0, 1.0, 1.0]))  # flat, tiny
    assert len(few.contents) == 1 and np.isfinite(few.apply(np.array([2.0]), np.array([0.5]))).all()


def test_brain_content_is_the_soft_tissue_share_of_the_scored_region() -> None:
    images = np.zeros((2, 4, 4, 1), dtype=np.float32)
    images[0, :2, :, 0] = 0.5  # half tissue
    images[0, 2:, :, 0] = 1.0  # half bone
    images[1, :, :, 0] = 0.5
    regions = np.ones((2, 4, 4), dtype=bool)
    regions[1, :, :2] = False
    np.testing.assert_allclose(brain_content(images, regions), [0.5, 1.0])
