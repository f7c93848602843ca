"""The calibration record: what stage `calibrate` decided, as one typed object, and the one place that
reads and writes its file, `threshold.json` (a DVC metric and an MLflow artifact, so its key names are
the record's field names). Every reader (the calibrated detector, evaluate, the sweep's objective, the
benchmark) loads it here, so a file of another version, or with a field missing or of the wrong type,
is one clear error naming the file instead of a KeyError deep in a stage."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

from pipeline.core.config import Paths
from pipeline.core.errors import PipelineError
from pipeline.core.io import write_json

FILE = "threshold.json"
VERSION = 1  # raised when a field changes meaning or goes: a file of another version is written again


def report_file(paths: Paths) -> Path:
    """Where stage `calibrate` writes the record."""
    return paths.stage_reports("calibrate") / FILE


@dataclass(frozen=True)
class Calibration:
    """The threshold the detector applies and how it was chosen, the score it applies, and what the
    validation split says of it. The fields that default to None exist only where they apply (the
    validation split holds tumors, the pixel threshold was judged against lesion outlines, the
    feature-space score was tried) and are left out of the file otherwise."""

    # load: JSON types as they are (no "0.5" read as a number), and no key the record does not know
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(strict=True, extra="forbid")

    threshold: float  # the applied rule's: a slice scoring above it is anomalous
    method: str  # the applied threshold rule (`threshold.method`)
    score: str  # the score kind applied (what `score.kind: auto` chose)
    score_configured: str  # `score.kind`
    normalizer: dict[str, Any] | None  # the applied normaliser (`Normalizer.as_dict`); None: raw scores
    normalize: str  # its name, or "none"
    normalize_configured: str  # `score.normalize`
    features: bool  # whether the detector adds the feature-space score
    feature_normalizer: dict[str, Any] | None  # that score's normaliser, where it is added
    thresholds: dict[str, float]  # every rule's threshold on the same scores (rule -> threshold)
    pixel_threshold: float  # a residual-map pixel above it is anomalous
    pixel_rule: str  # "percentile" or "dice_optimal" (`pipeline.evaluation.localization.PixelThreshold`)
    pixel_percentile: float  # the healthy validation pixels' percentile it is
    val_score_mean: float  # of the healthy validation slices' applied scores
    val_score_std: float
    val_images: int  # healthy validation slices
    val_tumor_images: int
    val_dice: float | None = None  # the pixel threshold's Dice with the validation lesions' outlines
    val_roc_auc: float | None = None  # the applied score's, what hyperparameter searches maximise
    val_pr_auc: float | None = None
    val_roc_auc_ci_low: float | None = None  # its 95% bootstrap interval: is a change beyond sampling?
    val_roc_auc_ci_high: float | None = None
    val_roc_auc_by_score: dict[str, float] | None = None  # each kind's, under the applied normaliser
    val_roc_auc_by_normalizer: dict[str, float] | None = None  # the applied kind's, each normaliser tried
    val_roc_auc_with_features: float | None = None  # with the feature-space score added, where tried
    version: int = VERSION

    def as_json(self) -> dict[str, Any]:
        """The file's content: every field, those that default to None left out while None."""
        optional = {field.name for field in fields(self) if field.default is None}
        return {key: value for key, value in asdict(self).items() if value is not None or key not in optional}

    def save(self, path: Path) -> None:
        write_json(path, self.as_json())

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """Read a record `save` wrote; a missing or unreadable file, another version and a field missing,
        unknown or of the wrong type are each a PipelineError naming the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            saved = json.loads(text)
        except FileNotFoundError:
            raise PipelineError(f"{path}: no calibration record (run stage calibrate: dvc repro)") from None
        except (OSError, ValueError) as err:  # ValueError: not UTF-8, not JSON (a truncated file)
            raise PipelineError(f"{path}: cannot be read as a calibration record ({err})") from None
        version = saved.get("version") if isinstance(saved, dict) else None
        if version != VERSION:
            raise PipelineError(
                f"{path}: calibration record version {version}, this code reads version {VERSION} "
                "(run stage calibrate again: dvc repro)"
            )
        try:
            return _ADAPTER.validate_json(text)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'record'}: {error['msg']}"
                for error in err.errors()
            )
            raise PipelineError(f"{path}: not a valid calibration record ({problems})") from None


_ADAPTER = TypeAdapter(Calibration)
