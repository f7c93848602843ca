"""Training: seeded reruns give the same numbers; batches are augmented, noisy only inside the head,
different every epoch and the same for the same seed."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.core.config import AugmentConfig, NoiseConfig, TrainConfig
from pipeline.detection.scoring import reconstruct_and_score
from pipeline.models import build_model
from pipeline.models.training import TrainingResult, fit, learning_rate, seed_everything, training_batches
from tests.conftest import score_config

AUGMENT = AugmentConfig(rotation=10, shift=0.1, flip=True, intensity=0.2)
NO_AUGMENT = AugmentConfig(rotation=0, shift=0, flip=False, intensity=0)
NOISE = NoiseConfig(std=0.2, resolution=4)
NO_NOISE = NoiseConfig(std=0, resolution=4)


def _config(augment: AugmentConfig = AUGMENT, noise: NoiseConfig = NOISE, **changes: object) -> TrainConfig:
    settings = {
        "epochs": 3,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "early_stopping_patience": 1,
        "progress": False,
        "precision": "float32",
        "schedule": "constant",
        "augment": augment,
        "noise": noise,
        "bleeds": {"probability": 0.0, "contrast": (15, 60)},
    } | changes
    return TrainConfig(**settings)


def _heads(n: int, seed: int = 0) -> np.ndarray:
    """(n, 16, 16, 1) discs of random values in [0.2, 0.8], black outside."""
    yy, xx = np.mgrid[:16, :16]
    disc = (yy - 7.5) ** 2 + (xx - 7.5) ** 2 <= 36
    values = np.random.default_rng(seed).uniform(0.2, 0.8, (n, 16, 16))
    return (disc * values)[..., None].astype(np.float32)


def _epoch(dataset: object) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(inputs.numpy(), targets.numpy()) for inputs, targets in dataset]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


# --- fit -------------------------------------------------------------------------------------------

DATA = _heads(24)


class SpoilLastEpoch(keras.callbacks.Callback):
    """Replaces the weights with random ones before the third epoch, so that epoch 2 stays the best."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == 2:
            rng = np.random.default_rng(0)
            self.model.set_weights(
                [rng.normal(0, 1, w.shape).astype(w.dtype) for w in self.model.get_weights()]
            )


def _fit(seed: int) -> tuple[TrainingResult, np.ndarray, np.ndarray]:
    """A tiny autoencoder fitted for 3 epochs (no early stop), its scores and validation reconstructions."""
    seed_everything(seed)
    model = build_model("cae", (16, 16, 1), {"width": 4, "depth": 2, "latent_dim": 4})
    config = _config(early_stopping_patience=10, learning_rate=1e-2)
    result = fit(model, DATA[:16], DATA[16:], config, seed, callbacks=[SpoilLastEpoch()])
    return (
        result,
        reconstruct_and_score(model, DATA, score_config(), 0.1)[1],
        model.predict(DATA[16:], verbose=0),
    )


@pytest.fixture(scope="module")
def twice() -> tuple[tuple[TrainingResult, np.ndarray, np.ndarray], ...]:
    return _fit(7), _fit(7)


def test_same_seed_same_losses_and_scores(
    twice: tuple[tuple[TrainingResult, np.ndarray, np.ndarray], ...],
) -> None:
    (first, first_scores, _), (again, again_scores, _) = twice
    assert first.history == again.history
    assert first.best_epoch == again.best_epoch
    np.testing.assert_array_equal(first_scores, again_scores)
    assert np.all(first_scores > 0)


def test_history_best_epoch_and_kept_weights(
    twice: tuple[tuple[TrainingResult, np.ndarray, np.ndarray], ...],
) -> None:
    result, _, reconstructions = twice[0]
    assert set(result.history) == {"loss", "val_loss"}
    assert len(result.history["loss"]) == len(result.history["val_loss"]) == 3
    assert all(np.isfinite(result.history["loss"]))
    assert result.best_epoch == 2 == 1 + int(np.argmin(result.history["val_loss"]))
    assert result.history["val_loss"][2] > result.history["val_loss"][1] + 0.01  # the spoiled epoch
    assert result.seconds > 0 and result.images_per_second == pytest.approx(16 * 3 / result.seconds)
    # The kept weights are the best epoch's, not the last one's: the validation loss now is epoch 2's.
    loss = float(np.mean((reconstructions - DATA[16:]) ** 2))
    assert loss == pytest.approx(result.history["val_loss"][1], rel=1e-4)


# --- training_batches ------------------------------------------------------------------------------


def test_without_augmentation_or_noise_inputs_and_targets_are_the_images_shuffled() -> None:
    images = _heads(12)
    inputs, targets = _epoch(training_batches(images, _config(NO_AUGMENT, NO_NOISE, batch_size=5), seed=0))
    np.testing.assert_array_equal(inputs, targets)
    assert targets.shape == images.shape
    order = [int(np.flatnonzero((images == target).all(axis=(1, 2, 3)))[0]) for target in targets]
    assert sorted(order) == list(range(12))  # each image once
    assert order != list(range(12))  # shuffled


def test_augmented_targets_differ_from_every_raw_image() -> None:
    images = _heads(12)
    _, targets = _epoch(training_batches(images, _config(noise=NO_NOISE), seed=0))
    for target in targets:
        assert np.abs(images - target).max(axis=(1, 2, 3)).min() > 0.01


@pytest.mark.parametrize("augment", [AUGMENT, NO_AUGMENT])
def test_noise_is_added_inside_the_head_only(augment: AugmentConfig) -> None:
    images = _heads(12)
    inputs, targets = _epoch(training_batches(images, _config(augment), seed=1))
    background = targets == 0
    assert background.any() and (~background).any()
    np.testing.assert_array_equal(inputs[background], 0.0)
    assert np.mean(inputs[~background] != targets[~background]) > 0.9


def test_values_stay_in_the_unit_range_under_strong_gain_and_noise() -> None:
    images = _heads(12)
    images[:, 4:12, 4:12] = 1.0  # saturated pixels, pushed above 1 by the gain and the noise
    config = _config(
        AugmentConfig(rotation=30, shift=0.3, flip=True, intensity=0.5), NoiseConfig(std=1.0, resolution=8)
    )
    inputs, targets = _epoch(training_batches(images, config, seed=2))
    for values in (inputs, targets):
        assert values.min() >= 0.0 and values.max() <= 1.0
    assert (inputs == 1.0).any() and (inputs == 0.0).any()


def test_each_epoch_gets_new_augmentation_and_noise() -> None:
    dataset = training_batches(_heads(1), _config(), seed=3)  # one image: shuffling changes nothing
    (inputs_1, targets_1), (inputs_2, targets_2) = _epoch(dataset), _epoch(dataset)
    assert np.abs(targets_1 - targets_2).max() > 0.05
    assert np.abs((inputs_1 - targets_1) - (inputs_2 - targets_2)).max() > 0.05  # new noise too


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    images = _heads(12)
    first = _epoch(training_batches(images, _config(), seed=4))
    again = _epoch(training_batches(images, _config(), seed=4))
    other = _epoch(training_batches(images, _config(), seed=5))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.abs(first[1] - other[1]).max() > 0.05


def test_the_cosine_schedule_falls_from_the_learning_rate_to_zero_over_all_epochs() -> None:
    assert learning_rate(_config(), 100) == 1e-3
    schedule = learning_rate(_config(schedule="cosine", epochs=4, batch_size=10), 95)  # 10 steps an epoch
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(20)) == pytest.approx(0.5e-3, rel=1e-3)  # half way
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-9)
