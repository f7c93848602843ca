"""The product of the pipeline: preprocessing, the autoencoder, the score and the threshold as one object.

Calibration, evaluation, the predict command and the served MLflow model all score through a
`Detector` (calibration through one whose threshold it is about to set), so an image gets the same
score wherever it is scored. On disk it is a folder with the Keras model and
`detector.json` (threshold, preprocessing config, where it came from); `pipeline.serving.model` wraps that
folder as an MLflow pyfunc model.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from pydantic import ValidationError

from pipeline.core.config import PreprocessConfig, ScoreConfig, Settings
from pipeline.core.errors import ImageDecodeError, PipelineError, unexpected
from pipeline.core.io import read_json, write_json
from pipeline.data.dicom import apply_window
from pipeline.data.guards import check_content, check_finite
from pipeline.data.images import DECODE_WORKERS, Geometry, Source, decode, model_input
from pipeline.data.neighbours import ScanKey, stack_neighbours
from pipeline.detection import scoring
from pipeline.detection.calibration import Calibration
from pipeline.detection.features import FeatureScore, PatchMemory
from pipeline.detection.normalization import ContentNormalizer, Normalizer, SliceFacts, load_normalizer
from pipeline.models import load_model

log = logging.getLogger(__name__)
MODEL_FILE = "model.keras"
SETTINGS_FILE = "detector.json"
PATCHES_FILE = "patches.npz"  # the feature-space score's memory, where the detector adds that score


@dataclass(frozen=True)
class DecodedBatch:
    """The sources that decoded, as one model-ready batch, and why the others did not."""

    images: np.ndarray  # (n_ok, size, size, preprocess.channels) float32
    decoded: np.ndarray  # indices (into the sources) of the rows of `images`
    errors: dict[int, str]  # source index -> reason it could not be read
    geometries: tuple[Geometry, ...]  # per row: where its model grid lies on its slice (`images.to_slice`)

    def within(self, start: int, stop: int) -> DecodedBatch:
        """The sources [start, stop) alone, numbered from `start`: a slab read with neighbouring slices
        on either side (to stack them) keeps the rows it scores."""
        keep = (self.decoded >= start) & (self.decoded < stop)
        errors = {index - start: reason for index, reason in self.errors.items() if start <= index < stop}
        geometries = tuple(g for g, kept in zip(self.geometries, keep, strict=True) if kept)
        return DecodedBatch(self.images[keep], self.decoded[keep] - start, errors, geometries)


@dataclass
class Detector:
    model: keras.Model
    threshold: float  # NaN until calibrated
    preprocess: PreprocessConfig
    scoring: ScoreConfig
    info: dict[str, Any] = field(default_factory=dict)  # provenance: run id, model name, ...
    pixel_threshold: float = math.nan  # a residual-map pixel above it is anomalous (the anomaly mask)
    normalizer: Normalizer | None = None  # score.normalize: scores relative to healthy slices like each
    features: FeatureScore | None = None  # the feature-space score, where calibrate chose to add it

    @classmethod
    def uncalibrated(cls, model: keras.Model, preprocess: PreprocessConfig, scoring: ScoreConfig) -> Detector:
        """A detector that scores but has no threshold yet: what calibration sets one from."""
        return cls(model, math.nan, preprocess, scoring)

    @classmethod
    def calibrated(
        cls, settings: Settings, calibration: Calibration, info: dict[str, Any] | None = None
    ) -> Detector:
        """The detector the pipeline's stages made: train's model and what calibrate's record
        describes: its thresholds, the score kind it applied (what `score.kind: auto` chose), its
        normaliser and, where it added the feature-space score, the memory it fitted. `settings` as the
        stages run them (`datasets.for_data`: the windows the data allows)."""
        return cls(
            load_model(settings.paths.model_file),
            calibration.threshold,
            settings.preprocess,
            settings.score.model_copy(update={"kind": calibration.score}),
            info or {},
            calibration.pixel_threshold,
            load_normalizer(calibration.normalizer),
            _features(calibration.feature_normalizer, settings.paths.patches),
        )

    def decode(
        self,
        sources: Sequence[Source],
        names: Sequence[str],
        scans: Sequence[ScanKey] | None = None,
        slices: Sequence[int | None] | None = None,
    ) -> DecodedBatch:
        """Decode and preprocess files (or their bytes) in parallel; unreadable ones are reported. Each
        decoded slice's geometry comes along, for maps to be put back on its pixels. `scans`, `slices`:
        each source's scan and place in it, for `preprocess.neighbours` (None: lone images)."""

        def prepare(index: int) -> tuple[np.ndarray, Geometry]:
            decoded = decode(sources[index], self.preprocess, names[index])
            return model_input(
                decoded.pixels,
                decoded.head,
                decoded.hounsfield,
                self.preprocess,
                names[index],
                decoded.format,
            )

        return self._prepare(len(sources), prepare, scans, slices)

    def prepare_hounsfield(self, slices: Sequence[np.ndarray] | np.ndarray) -> DecodedBatch:
        """Slices already decoded to Hounsfield units (e.g. a CT volume's axial slices) -> the model's
        batch with each slice's geometry: seen through `preprocess.dicom_window` (and each of
        `preprocess.extra_windows`) as a DICOM slice is, then preprocessed, in parallel. A slice with
        non-finite voxels, or with nothing to score (above or below the head), is an error, as a file
        would be. The slices are consecutive slices of one scan: each gets its neighbours among them."""
        window = self.preprocess.dicom_window

        def prepare(index: int) -> tuple[np.ndarray, Geometry]:
            check_finite(f"slice {index}", slices[index], "voxel")
            gray = apply_window(slices[index], window.level, window.width)
            head = check_content(f"slice {index}", gray, self.preprocess.head.threshold)
            return model_input(gray, head, slices[index], self.preprocess, f"slice {index}")

        return self._prepare(len(slices), prepare, [0] * len(slices), range(len(slices)))

    def _prepare(
        self,
        count: int,
        prepare: Callable[[int], tuple[np.ndarray, Geometry]],
        scans: Sequence[ScanKey] | None = None,
        slices: Sequence[int | None] | None = None,
    ) -> DecodedBatch:
        """Run `prepare` on every index, `DECODE_WORKERS` at a time; an ImageDecodeError is that index's
        error, and so is any other exception (logged: a reader's bug must cost one input, not the batch).
        The decoded rows then get their neighbours (`scans`, `slices`; None: lone images)."""
        size = self.preprocess.image_size
        images = np.empty((count, size, size, self.preprocess.scored_channels), dtype=np.float32)
        geometries: dict[int, Geometry] = {}
        errors: dict[int, str] = {}

        def run(index: int) -> None:
            try:
                images[index], geometries[index] = prepare(index)
            except ImageDecodeError as err:
                errors[index] = err.reason
            except Exception as err:  # noqa: BLE001
                log.exception("input %d of a batch: unexpected error while it was read", index)
                errors[index] = unexpected(err)

        with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as pool:
            list(pool.map(run, range(count)))
        decoded = np.array([i for i in range(count) if i not in errors], dtype=np.int64)
        scans = [None] * count if scans is None else scans
        slices = [None] * count if slices is None else slices
        stacked = stack_neighbours(
            images[decoded],
            [scans[i] for i in decoded],
            [slices[i] for i in decoded],
            self.preprocess.neighbours,
        )
        return DecodedBatch(
            stacked, decoded, dict(sorted(errors.items())), tuple(geometries[i] for i in decoded)
        )

    def reconstruct_and_score(
        self, images: np.ndarray, levels: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reconstructions and scores of a preprocessed batch (from `decode`, or a cached split); `levels`:
        each slice's place in its scan (0 lowest .. 1 highest, NaN for a lone image), where known."""
        return scoring.reconstruct_and_score(
            self.model,
            images,
            self.scoring,
            self.preprocess.head.threshold,
            self.normalizer,
            self.features,
            levels,
            self.preprocess.scored_channels,
        )

    def regions(self, images: np.ndarray) -> np.ndarray:
        """(n, h, w) masks of where each slice is scored (its head, or the whole image)."""
        return scoring.regions(images, self.scoring, self.preprocess.head.threshold)

    def facts(self, images: np.ndarray, levels: np.ndarray | None = None) -> SliceFacts:
        """What each slice's healthy reference is matched on (`pipeline.detection.normalization`)."""
        head_masks = scoring.heads(images, self.preprocess.head.threshold)
        masks = scoring.regions(images, self.scoring, self.preprocess.head.threshold, head_masks)
        return SliceFacts.of(images, masks, head_masks, levels)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        return scoring.reconstruct(self.model, images, self.scoring.tta)

    def all_scores(self, images: np.ndarray, reconstructions: np.ndarray) -> dict[str, np.ndarray]:
        """Every registered kind of score, read in this detector's region: how calibration compares
        the kinds on validation slices (its own kind is `self.scoring.kind`)."""
        own = self.preprocess.scored_channels
        return scoring.score_all(
            images, reconstructions, self.scoring, self.preprocess.head.threshold, channels=own
        )

    def score(self, images: np.ndarray, levels: np.ndarray | None = None) -> np.ndarray:
        return self.reconstruct_and_score(images, levels)[1]

    def residual_maps(self, images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
        """Where each slice is anomalous: smoothed absolute residuals inside the scored region."""
        own = self.preprocess.scored_channels
        return scoring.residual_maps(
            images, reconstructions, self.scoring, self.preprocess.head.threshold, own
        )

    def anomaly_mask(self, maps: np.ndarray) -> np.ndarray:
        """Where each slice is anomalous: residual-map pixels above the calibrated pixel threshold."""
        if math.isnan(self.pixel_threshold):
            raise ValueError("the detector has no pixel threshold (packaged before anomaly masks existed)")
        return np.asarray(maps) > self.pixel_threshold

    def is_anomaly(self, scores: np.ndarray) -> np.ndarray:
        if math.isnan(self.threshold):
            raise ValueError("the detector has no threshold yet (calibrate sets one)")
        return np.asarray(scores) > self.threshold

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(directory / MODEL_FILE)
        if self.features is not None:
            self.features.memory.save(directory / PATCHES_FILE)
        write_json(
            directory / SETTINGS_FILE,
            {
                "threshold": self.threshold,
                "pixel_threshold": self.pixel_threshold,
                "preprocess": self.preprocess.model_dump(mode="json"),
                "score": self.scoring.model_dump(mode="json"),
                "normalizer": self.normalizer.as_dict() if self.normalizer is not None else None,
                "feature_normalizer": None if self.features is None else self.features.normalizer.as_dict(),
                "info": self.info,
            },
        )

    @classmethod
    def load(cls, directory: Path) -> Detector:
        """Read a saved detector; an unreadable folder, a corrupt or incomplete `detector.json` and a
        missing or truncated model are each one clear error."""
        directory = Path(directory)
        if directory.is_dir() and not os.access(directory, os.R_OK | os.X_OK):
            raise PipelineError(f"{directory}: cannot read this detector folder (permissions)")
        settings_file = directory / SETTINGS_FILE
        if not settings_file.is_file():
            raise PipelineError(f"{directory}: not a detector (no {SETTINGS_FILE} with a threshold)")
        try:
            saved = read_json(settings_file)
        except (OSError, ValueError) as err:  # ValueError: not UTF-8, not JSON (a truncated file)
            raise PipelineError(f"{settings_file}: cannot be read as JSON ({err})") from None
        if not isinstance(saved, dict) or not isinstance(saved.get("threshold"), int | float):
            raise PipelineError(f"{settings_file}: no numeric 'threshold'")
        sections = {}
        for key, section in (("preprocess", PreprocessConfig), ("score", ScoreConfig)):
            try:
                sections[key] = section.model_validate(saved.get(key))
            except ValidationError as err:
                raise PipelineError(f"{settings_file}: invalid '{key}': {err}") from None
        model_file = directory / MODEL_FILE
        if not model_file.is_file():
            raise PipelineError(f"{directory}: not a detector (no {MODEL_FILE})")
        try:
            model = load_model(model_file)
        except Exception as err:  # noqa: BLE001 -- Keras raises ValueError ("File not found"), zip errors, ...
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise PipelineError(f"{model_file}: cannot load the Keras model (truncated?): {reason}") from None
        pixel_threshold = saved.get("pixel_threshold")  # detectors packaged before issue 13 lack it
        return cls(
            model,
            float(saved["threshold"]),
            sections["preprocess"],
            sections["score"],
            saved.get("info", {}),
            float(pixel_threshold) if isinstance(pixel_threshold, int | float) else math.nan,
            load_normalizer(saved.get("normalizer")),
            _features(saved.get("feature_normalizer"), directory / PATCHES_FILE),
        )


def _features(normalizer: dict[str, Any] | None, patches: Path) -> FeatureScore | None:
    """The feature-space score, where the detector adds it (its normalizer is saved only then)."""
    if not normalizer:
        return None
    return FeatureScore(PatchMemory.load(patches), ContentNormalizer.from_dict(normalizer))
