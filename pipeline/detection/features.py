"""Feature-space scoring: how far each region of a slice lies, in the trained network's own features,
from the nearest region of any healthy training slice (a PatchCore-style memory, Roth et al. 2022).

The residual sees what the autoencoder cannot redraw; a lesion the denoiser half redraws (a faint
tumour, a crescent of blood) can still give features no healthy region has. The features are the
encoder's at a quarter of the input resolution (`SCALE`): each one describes a few pixels with their
surroundings. Nothing pretrained is needed: the memory holds a random sample of `BANK` feature vectors
from inside the heads of the healthy training slices, and a region's distance is the Euclidean distance
to its nearest neighbour there. No ImageNet weights are reachable here, and an encoder trained on
healthy CT knows CT. Whether a detector adds this to its score is chosen on validation
(`score.features`), since it helps on some data (the built-in scans) and not on others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from scipy import ndimage

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path
from pipeline.detection.normalization import ContentNormalizer, SliceFacts
from pipeline.models import infer

SCALE = 4  # the features' resolution: the input's divided by this
BANK = 20_000  # feature vectors kept from the healthy training slices
BATCH = 64  # slices whose features are held at once while the memory is fitted
# Feature vectors compared with the whole memory at once, always this many (the last block padded): it
# bounds the distance matrix, and one shape keeps a slice's distances independent of its batch (`infer`).
QUERIES = 1024


def feature_layer(model: keras.Model) -> str | None:
    """The name of the encoder's last layer at 1/SCALE of the input resolution: the last such layer
    before the network's coarsest feature map (a U-Net's skip, a strided encoder's level); None where
    there is none (a model that halves its input once, a wrapped pretrained backbone)."""
    size = model.input_shape[1]
    spatial = [layer.output.shape[1] if len(layer.output.shape) == 4 else None for layer in model.layers]
    coarsest = min((s for s in spatial if s), default=None)
    if coarsest is None or coarsest > size // SCALE:
        return None
    bottom = spatial.index(coarsest)
    candidates = [
        layer.name
        for layer, s in zip(model.layers[: bottom + 1], spatial, strict=False)
        if s == size // SCALE and not isinstance(layer, keras.layers.MaxPooling2D)
    ]
    return candidates[-1] if candidates else None


def _encoder(model: keras.Model, layer: str) -> keras.Model:
    return keras.Model(model.input, model.get_layer(layer).output)


def _features(encoder: keras.Model, images: np.ndarray) -> np.ndarray:
    """(n, h/SCALE, w/SCALE, c) float32 features of a batch."""
    return infer(encoder, images).astype(np.float32, copy=False)


def _coarse(masks: np.ndarray) -> np.ndarray:
    """(n, h, w) region masks -> the feature grid's cells that hold any of the region."""
    n, h, w = masks.shape
    return masks.reshape(n, h // SCALE, SCALE, w // SCALE, SCALE).any(axis=(2, 4))


@dataclass(frozen=True)
class PatchMemory:
    """Feature vectors of healthy regions, and the layer they come from (empty: the model has none)."""

    layer: str
    bank: np.ndarray  # (m, c) float32

    @property
    def usable(self) -> bool:
        return len(self.bank) > 0

    @classmethod
    def fit(cls, model: keras.Model, images: np.ndarray, masks: np.ndarray, seed: int) -> PatchMemory:
        """Sample BANK feature vectors from inside the regions (`masks`) of healthy slices; each batch
        contributes its share, so the whole training set's features are never held at once."""
        layer = feature_layer(model)
        if layer is None:
            return cls("", np.empty((0, 0), np.float32))
        encoder = _encoder(model, layer)
        rng = np.random.default_rng(seed)
        share = 2 * BANK / max(len(images), 1)  # per slice, twice what is kept in the end
        kept = []
        for start in range(0, len(images), BATCH):
            features = _features(encoder, images[start : start + BATCH])
            inside = features[_coarse(masks[start : start + BATCH])]
            take = min(len(inside), math.ceil(share * len(features)))
            kept.append(inside[rng.choice(len(inside), take, replace=False)])
        bank = np.concatenate(kept)
        if len(bank) > BANK:
            bank = bank[rng.choice(len(bank), BANK, replace=False)]
        return cls(layer, bank)

    def distance_maps(self, model: keras.Model, images: np.ndarray) -> np.ndarray:
        """(n, h, w): each pixel's region's distance to the nearest healthy feature vector, bilinearly
        brought back to the image's resolution."""
        if not len(images):
            return np.empty(images.shape[:3], np.float32)
        features = _features(_encoder(model, self.layer), images)
        queries = features.reshape(-1, features.shape[-1])
        bank_norms = np.square(self.bank).sum(axis=1)
        nearest = np.empty(len(queries), np.float32)
        for start in range(0, len(queries), QUERIES):
            block = queries[start : start + QUERIES]
            rows = len(block)
            if rows < QUERIES:
                block = np.concatenate([block, np.zeros((QUERIES - rows, block.shape[1]), block.dtype)])
            squared = np.square(block).sum(axis=1)[:, None] - 2 * block @ self.bank.T + bank_norms[None]
            nearest[start : start + rows] = squared[:rows].min(axis=1)
        coarse = np.sqrt(np.maximum(nearest, 0)).reshape(features.shape[:3])
        return ndimage.zoom(coarse, (1, SCALE, SCALE), order=1).astype(np.float32)

    def scores(
        self, model: keras.Model, images: np.ndarray, masks: np.ndarray, percentile: float
    ) -> np.ndarray:
        """One score per slice: the `percentile` of its distance map inside its region."""
        maps = self.distance_maps(model, images)
        return np.array([np.percentile(m[k], percentile) for m, k in zip(maps, masks, strict=True)])

    def save(self, path: Path) -> None:
        """One .npz: the bank and the layer's name."""
        with atomic_path(Path(path)) as tmp, tmp.open("wb") as file:
            np.savez(file, bank=self.bank, layer=np.array(self.layer))

    @classmethod
    def load(cls, path: Path) -> PatchMemory:
        try:
            with np.load(path) as saved:
                return cls(str(saved["layer"]), saved["bank"].astype(np.float32))
        except (OSError, KeyError, ValueError) as err:
            raise PipelineError(f"{path}: not a patch memory ({err})") from None


@dataclass(frozen=True)
class FeatureScore:
    """The feature-space score as a detector adds it: distances to the memory, relative to healthy
    validation slices with as much brain (so it is on the residual score's scale)."""

    memory: PatchMemory
    normalizer: ContentNormalizer

    def __call__(
        self,
        model: keras.Model,
        images: np.ndarray,
        masks: np.ndarray,
        facts: SliceFacts,
        percentile: float,
    ) -> np.ndarray:
        return self.normalizer.apply(self.memory.scores(model, images, masks, percentile), facts)
