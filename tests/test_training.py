"""Training: seeded reruns give the same numbers; the score is the per-image MSE."""

from __future__ import annotations

import numpy as np

from pipeline.config import TrainConfig
from pipeline.models import build_model
from pipeline.scoring import reconstruction_errors, score
from pipeline.training import fit, seed_everything

CONFIG = TrainConfig(epochs=3, batch_size=8, learning_rate=1e-3, early_stopping_patience=1, progress=False)


def _run(seed: int) -> tuple[dict[str, list[float]], np.ndarray]:
    data = np.random.default_rng(0).random((24, 16, 16, 1), dtype=np.float32)
    seed_everything(seed)
    model = build_model("cae", (16, 16, 1), {"width": 4, "depth": 2, "latent_dim": 4})
    result = fit(model, data[:16], data[16:], CONFIG, callbacks=[])
    return result.history, score(model, data)


def test_same_seed_same_losses_and_scores() -> None:
    first, again = _run(7), _run(7)
    assert first[0] == again[0]
    np.testing.assert_array_equal(first[1], again[1])


def test_history_has_train_and_validation_loss_per_epoch() -> None:
    history, _ = _run(3)
    assert set(history) == {"loss", "val_loss"}
    assert len(history["loss"]) == len(history["val_loss"]) >= 1


def test_reconstruction_error_is_the_per_image_mse() -> None:
    images = np.zeros((2, 2, 2, 1), dtype=np.float32)
    reconstructions = images.copy()
    reconstructions[1] = 0.5
    np.testing.assert_allclose(reconstruction_errors(images, reconstructions), [0.0, 0.25])
