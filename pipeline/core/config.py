"""The typed, validated config: what every stage, the packaged detector and the CLIs agree on.

Pure pydantic, no Hydra: the served detector validates its preprocessing and score sections with these
classes. `pipeline.stages.entrypoint` composes `conf/` with Hydra and validates it here;
`pipeline.core.params` reads sections of `params.yaml` for the commands that run outside the pipeline. This
module checks what it can alone (types, ranges, choices it lists) and imports no other module of the pipeline:
the components import it. The names that pick a component (`model.name` and the model's parameters,
`data.source` and its source's keys, `score.kind`, `threshold.method`) are checked against the components'
registries where the settings are loaded (`pipeline.stages.components`), so a bad value still fails before any
stage does work.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)


class Section(BaseModel):
    """A config section: unknown keys and changes after validation are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ImageSize = Annotated[int, Field(ge=16, le=1024)]
MAX_PIXELS = 4096 * 4096  # preprocess.max_pixels unless set: far above any CT slice (512 x 512)
MAX_VOXELS = 512 * 512 * 512  # preprocess.max_voxels unless set: a 512 x 512 scan of 512 slices


class SourceConfig(BaseModel):
    """The `data` section: `source` names a data source registered in `pipeline.data.sources`, whose own
    config class (a subclass) validates the other keys where the settings are loaded
    (`pipeline.stages.components`); until then they are kept as given."""

    model_config = ConfigDict(extra="allow", frozen=True)
    source: str


class DicomWindow(Section):
    """The Hounsfield-unit window that maps a DICOM slice to [0, 1] (PNG and JPEG come windowed)."""

    level: float = Field(ge=-1024, le=3071)
    width: float = Field(gt=0, le=4096)


class HeadConfig(Section):
    """How the head is found (`pipeline.data.head`) and what is done with it."""

    mask: bool  # blank everything outside the head
    crop: bool  # crop to the head (plus `margin`) before padding to a square
    threshold: float = Field(gt=0, lt=1)  # intensity above which a pixel may be head
    margin: float = Field(ge=0, le=0.5)  # of the head's longer side, kept around it when cropping


class PreprocessConfig(Section):
    """Everything that turns a file into the model's input; the packaged detector carries it."""

    image_size: ImageSize
    dicom_window: DicomWindow
    # More Hounsfield windows, each one more input channel after the brain window's (channel 0): a
    # subdural window shows blood along the skull's inner table that the brain window saturates with the
    # bone. Only Hounsfield input (DICOM, NIfTI and DICOM series) has them: the stages drop them for
    # training data that is not all in HU (`datasets.for_data`), and a detector that reads them refuses an
    # already windowed image (PNG, JPEG), one file's error. Empty: one channel (detectors packaged before
    # had none).
    extra_windows: tuple[DicomWindow, ...] = ()
    # 2.5D: the brain-window channel of the n slices below and above in the same scan, as 2n more input
    # channels after the slice's own (`pipeline.data.neighbours`): a lesion spans slices, an anatomical
    # oddity of one slice less so. 0: the slice alone (detectors packaged before had none).
    neighbours: int = Field(default=0, ge=0, le=8)
    head: HeadConfig
    normalize: bool  # stretch the head's 1st..99th intensity percentiles to 0..1
    # a file with more pixels is refused from its header, before they are decoded (detectors packaged
    # before the limit existed get the default)
    max_pixels: int = Field(default=MAX_PIXELS, ge=1)
    # a volume (NIfTI, DICOM series) with more voxels is refused from its header(s), before they are read
    max_voxels: int = Field(default=MAX_VOXELS, ge=1)

    @property
    def scored_channels(self) -> int:
        """The slice's own channels: the brain window (`dicom_window`), then each extra window. Scores and
        residual maps read these alone, so that a lesion on a neighbouring slice is not this slice's."""
        return 1 + len(self.extra_windows)

    @property
    def channels(self) -> int:
        """The model input's channels: the slice's own (`scored_channels`), then its 2 * `neighbours`."""
        return self.scored_channels + 2 * self.neighbours


class ArchiveLimits(Section):
    """What a .zip of inputs (`data=local`, predict's PATH) may declare, checked before anything is
    extracted: a small archive that would fill the disk is refused."""

    max_size: int = Field(default=4 * 1024**3, ge=1)  # bytes, all entries uncompressed together
    # an entry's uncompressed / compressed size; CT images deflate 2-10x, a zip bomb ~1000x
    max_ratio: float = Field(default=100, ge=1)


class ModelConfig(BaseModel):
    """`name` picks the registered builder; every other key is passed to it."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class HealthySplit(Section):
    train: int = Field(ge=1)
    val: int = Field(ge=1)
    test: int = Field(ge=1)


class TumorSplit(Section):
    val: int = Field(ge=1)
    test: int = Field(ge=1)


class PatientSplit(Section):
    """Shares of the patients per split, when whole patients are split (`by_patient`)."""

    train: float = Field(gt=0, lt=1)
    val: float = Field(gt=0, lt=1)
    test: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _whole(self) -> PatientSplit:
        if abs(self.train + self.val + self.test - 1) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {self.train + self.val + self.test:g}")
        return self


class SplitConfig(Section):
    healthy: HealthySplit
    tumor: TumorSplit
    near_duplicate_distance: int = Field(ge=0, le=32)
    # auto: by patient when every slice comes from a scan with a patient id and there are enough patients
    by_patient: Literal["auto", "yes", "no"]
    patients: PatientSplit


class AugmentConfig(Section):
    """Random changes a healthy head could show on another day or scanner (0 switches one off)."""

    rotation: float = Field(ge=0, le=45)  # degrees, either way
    shift: float = Field(ge=0, le=0.5)  # fraction of the image side, in x and y
    flip: bool  # left-right mirror: brain anatomy is nearly symmetric
    intensity: float = Field(ge=0, le=0.5)  # intensity gain: every pixel times 1 ± this, per slice


class NoiseConfig(Section):
    """Denoising training: the model sees a slice with coarse Gaussian noise added inside the head and
    learns to give back the clean one, so it cannot simply copy anomalies through (std 0: off)."""

    std: float = Field(ge=0, le=1)
    resolution: int = Field(ge=1, le=256)  # the noise is drawn on a resolution x resolution grid, upsampled


class BleedConfig(Section):
    """Denoising training with synthetic bleeds: a training slice's input gets, with `probability`, one
    hyperdense shape inside the cranial cavity (a blob, a thin streak, or a crescent against the skull's
    inner table) that the model learns to remove, so that it does not redraw a real bleed (0: off)."""

    probability: float = Field(ge=0, le=1)  # of a training slice getting one
    # Hounsfield units the shape adds over the tissue it lies on, drawn per slice (acute blood is +20 to
    # +60 HU over brain); each channel gets them through its window's width. Data without Hounsfield units
    # (PNG, JPEG) trains without them (`datasets.for_data`)
    contrast: tuple[float, float]

    @model_validator(mode="after")
    def _range(self) -> BleedConfig:
        low, high = self.contrast
        if not 0 < low <= high:
            raise ValueError(f"contrast must be two HU values with 0 < low <= high, got {self.contrast}")
        return self


Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]


class TrainConfig(Section):
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1, le=4096)
    learning_rate: float = Field(gt=0, le=1)
    schedule: Literal[
        "constant", "cosine"
    ]  # of the learning rate; cosine: from learning_rate to 0 over all epochs
    early_stopping_patience: int = Field(ge=0)
    augment: AugmentConfig
    noise: NoiseConfig
    bleeds: BleedConfig
    progress: bool
    precision: Precision  # auto: bfloat16 where the CPU or GPU computes it natively (pipeline.core.hardware)


class RuntimeConfig(Section):
    """How a stage uses the machine; changes no result, so no stage reruns for it."""

    threads: int = Field(ge=0, le=1024)  # TensorFlow's thread pools; 0: the cores this process may use


class ScoreConfig(Section):
    """Which anomaly score (`pipeline.detection.scoring`) a slice gets, and where it is read."""

    # a name registered in pipeline.detection.scoring.SCORES, or `auto`: calibrate picks on validation
    kind: str
    region: Literal["head", "brain", "image"]  # brain: the cranial cavity and the skull's inner table
    percentile: float = Field(gt=0, le=100)  # residual_percentile and symmetry; 100 = the maximum
    smoothing: float = Field(ge=0, le=16)  # Gaussian sigma (pixels) of the residual before the percentile
    # relative to healthy slices like it (pipeline.detection.normalization): of as much brain (content),
    # nearest in level and anatomy (reference), the better of the two on validation (auto)
    normalize: Literal["none", "content", "reference", "auto"] = "none"
    tta: Literal["none", "flip"] = "none"  # flip: reconstructions averaged with the mirror image's
    # add the feature-space score (pipeline.detection.features): when it raises validation ROC AUC, always,
    # never
    features: Literal["auto", "always", "never"] = "never"

    @model_validator(mode="after")
    def _features_need_a_common_scale(self) -> ScoreConfig:
        if self.features != "never" and self.normalize == "none":
            raise ValueError(
                f"score.features={self.features} adds two scores, which needs them on one scale: "
                "set score.normalize (content, reference or auto) or score.features=never"
            )
        return self


class ThresholdConfig(Section):
    """Which threshold (`pipeline.detection.thresholds`) is applied; calibrate computes and logs all of
    them."""

    method: str  # a name registered in pipeline.detection.thresholds.THRESHOLD_RULES
    k: float = Field(ge=0, le=10)  # mean_std: mean + k * std of healthy validation scores
    percentile: float = Field(gt=0, le=100)  # percentile: of healthy validation scores
    # a residual-map pixel above this percentile of the healthy validation pixels is anomalous; `auto`:
    # where the validation lesions have outlines, the percentile whose Dice with them is highest
    # (`pipeline.evaluation.localization.choose_pixel_threshold`)
    pixel: Literal["auto", "percentile"]
    pixel_percentile: float = Field(gt=0, lt=100)


class EvaluateConfig(Section):
    n_examples: int = Field(ge=0, le=32)
    bootstrap: int = Field(ge=100, le=100_000)  # resamples behind each 95% confidence interval
    top_k: int = Field(ge=1, le=64)  # a scan's second score: the mean of its top_k slice scores


class MlflowConfig(Section):
    tracking_uri: str = Field(min_length=1)
    artifact_root: Path
    experiment: str = Field(min_length=1)
    data_experiment: str = Field(min_length=1)
    registered_model: str = Field(min_length=1)
    register_detector: bool
    model_alias: str = Field(pattern=r"^[\w-]+$")

    @field_validator("model_alias")
    @classmethod
    def _not_reserved(cls, alias: str) -> str:
        if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
            raise ValueError(f"'{alias}' is reserved by the MLflow registry (latest, v1, v2, ...)")
        return alias


class Paths(Section):
    raw: Path
    manifests: Path
    splits: Path
    cache: Path
    model: Path
    reports: Path

    @property
    def model_file(self) -> Path:
        return self.model / "model.keras"

    @property
    def patches(self) -> Path:
        """Calibrate's memory of healthy feature vectors (`pipeline.detection.features`)."""
        return self.model / "patches.npz"

    @property
    def detector(self) -> Path:
        """The packaged detector (an MLflow model folder): what `pipeline.predict` uses by default."""
        return self.model / "detector"

    def stage_reports(self, stage: str) -> Path:
        return self.reports / stage

    @property
    def registration(self) -> Path:
        """What `package` registered (version, run): the version `publish` points the alias at."""
        return self.stage_reports("package") / "registered.json"

    def run_file(self, stage: str) -> Path:
        """Where a model stage leaves the id of the MLflow run it logged to (a DVC output)."""
        return self.model / "run.json" if stage == "train" else self.stage_reports(stage) / "run.json"


class Settings(Section):
    seed: int = Field(ge=0, lt=2**32)
    data: SerializeAsAny[SourceConfig]  # dumped with the fields of the source's own config class
    preprocess: PreprocessConfig
    model: ModelConfig
    split: SplitConfig
    train: TrainConfig
    score: ScoreConfig
    threshold: ThresholdConfig
    evaluate: EvaluateConfig
    mlflow: MlflowConfig
    paths: Paths
    runtime: RuntimeConfig
    archive: ArchiveLimits

    def flat_params(self) -> dict[str, str]:
        """Every config value as `section.key` -> string, the shape MLflow params take."""
        return flatten(self.model_dump(mode="json"))


def invalid(error: ValidationError, section: str = "") -> str:
    """A validation error as one line per offending key, named from the top of the config: `section` is
    the key of the section that was validated alone (`data`, by its source's config class)."""
    lines = []
    for item in error.errors():
        key = ".".join(map(str, (section, *item["loc"]) if section else item["loc"]))
        got = f" (got {item['input']!r})" if item["type"] != "missing" else ""
        lines.append(f"  {key}: {item['msg']}{got}")
    return "invalid config:\n" + "\n".join(lines)


def flatten(config: dict[str, Any]) -> dict[str, str]:
    """Nested config -> `section.key` -> string."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = str(value)

    walk("", config)
    return flat
