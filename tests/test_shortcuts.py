"""The shortcut check of issue 5: tumor slices that differ from healthy ones only by burned-in text
outside the head. Scoring the whole slice ranks them perfectly, for the wrong reason; the blanked copy
that evaluate builds exposes it, and the project's head masking removes it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from pipeline.core.config import Settings
from pipeline.data.datasets import Split
from pipeline.detection.detector import Detector
from pipeline.stages.evaluate import _blanked_scores
from tests.conftest import preprocess_config, score_config

SIDE = 96


def _head(rng: np.random.Generator) -> np.ndarray:
    """A grey disc with a bright rim and some texture, placed a little differently each time."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    cy, cx, radius = 48 + rng.integers(-4, 5), 48 + rng.integers(-4, 5), rng.integers(28, 34)
    distance = np.hypot(yy - cy, xx - cx)
    head = np.where(distance < radius, 110 + rng.integers(0, 30, (SIDE, SIDE)), 0)
    return np.where((distance >= radius - 3) & (distance < radius), 250, head).astype(np.uint8)


@pytest.fixture
def raw(make_settings: Callable[..., Settings]) -> tuple[Settings, pd.DataFrame]:
    """Eight healthy slices and the same eight with scanner text in the top-left corner as 'tumors'."""
    settings = make_settings()
    rng = np.random.default_rng(0)
    rows = []
    for index in range(8):
        head = _head(rng)
        texted = head.copy()
        texted[3:9, 3:30] = 255  # a line of burned-in text, well clear of the head
        for cls, pixels in (("healthy", head), ("tumor", texted)):
            path = Path(cls.title()) / f"{cls}_{index}.png"
            (settings.paths.raw / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(settings.paths.raw / path)
            rows.append({"path": path.as_posix(), "class": cls})
    return settings, pd.DataFrame(rows)


def _zero_model(size: int) -> keras.Model:
    """Reconstructs nothing, so the score is the slice's own energy: text counts like anatomy."""
    inputs = keras.Input((size, size, 1))
    return keras.Model(inputs, keras.ops.zeros_like(inputs))


@pytest.mark.parametrize("head", [False, True], ids=["whole slice", "head only"])
def test_the_blanked_copy_exposes_a_text_shortcut_and_head_masking_removes_it(
    raw: tuple[Settings, pd.DataFrame], head: bool
) -> None:
    settings, frame = raw
    preprocess = preprocess_config(32, head=head)
    detector = Detector(_zero_model(32), 0.0, preprocess, score_config("mse", "head" if head else "image"))
    settings = settings.model_copy(update={"preprocess": preprocess})
    batch = detector.decode([settings.paths.raw / p for p in frame["path"]], list(frame["path"]))
    labels = (frame["class"] == "tumor").to_numpy()
    blanked = _blanked_scores(detector, settings, Split("test", frame, batch.images))
    scores = detector.score(batch.images)

    assert roc_auc_score(labels, blanked) == 0.5  # the pairs are the same heads once the text is gone
    if head:
        np.testing.assert_allclose(scores, blanked, atol=1e-6)  # nothing outside the head reached the score
        assert roc_auc_score(labels, scores) == 0.5
    else:  # every 'tumor' outscores its own healthy twin, only because of the text
        assert np.all(scores[labels] > scores[~labels]) and roc_auc_score(labels, scores) > 0.8
