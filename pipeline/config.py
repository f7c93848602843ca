"""Typed, validated view of the Hydra config, and the decorator that makes a stage entry point.

`conf/` is the single source of truth. Run alone, a stage composes `conf/` (plus any Hydra
overrides on its command line); under DVC it reads `params.yaml` (`--config-dir . --config-name params`),
the composition that `dvc exp run -S ...` writes. Either way the config is checked here, before any
long work starts, and every stage gets the same `Settings` object.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError, PipelineError

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
PARAMS_FILE = ROOT / "params.yaml"

log = logging.getLogger(__name__)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SectionT = TypeVar("SectionT", bound=_Section)
ImageSize = Annotated[int, Field(ge=16, le=1024)]


class SyntheticData(_Section):
    source: Literal["synthetic"]
    n_healthy: int = Field(ge=10)
    n_tumor: int = Field(ge=4)
    min_size: int = Field(ge=32, le=4096)
    max_size: int = Field(ge=32, le=4096)

    @model_validator(mode="after")
    def _sizes_ordered(self) -> SyntheticData:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) is larger than max_size ({self.max_size})")
        return self


class LocalData(_Section):
    source: Literal["local"]
    path: Path

    @field_validator("path")
    @classmethod
    def _exists(cls, path: Path) -> Path:
        path = path.expanduser()
        if not path.exists():
            raise ValueError(f"'{path}' does not exist")
        return path.resolve()


class KaggleData(_Section):
    source: Literal["kaggle"]
    handle: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")


DataConfig = Annotated[SyntheticData | LocalData | KaggleData, Field(discriminator="source")]


class DicomWindow(_Section):
    """The Hounsfield-unit window that maps a DICOM slice to [0, 1] (PNG and JPEG come windowed)."""

    level: float = Field(ge=-1024, le=3071)
    width: float = Field(gt=0, le=4096)


class HeadConfig(_Section):
    """How the head is found (`pipeline.data.head`) and what is done with it."""

    mask: bool  # blank everything outside the head
    crop: bool  # crop to the head (plus `margin`) before padding to a square
    threshold: float = Field(gt=0, lt=1)  # intensity above which a pixel may be head
    margin: float = Field(ge=0, le=0.5)  # of the head's longer side, kept around it when cropping


class PreprocessConfig(_Section):
    """Everything that turns a file into the model's input; the packaged detector carries it."""

    image_size: ImageSize
    dicom_window: DicomWindow
    head: HeadConfig
    normalize: bool  # stretch the head's 1st..99th intensity percentiles to 0..1


class ModelConfig(BaseModel):
    """`name` picks the registered builder; every other key is passed to it."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class HealthySplit(_Section):
    train: int = Field(ge=1)
    val: int = Field(ge=1)
    test: int = Field(ge=1)


class TumorSplit(_Section):
    val: int = Field(ge=1)
    test: int = Field(ge=1)


class SplitConfig(_Section):
    healthy: HealthySplit
    tumor: TumorSplit
    near_duplicate_distance: int = Field(ge=0, le=32)


class AugmentConfig(_Section):
    """Random changes a healthy head could show on another day or scanner (0 switches one off)."""

    rotation: float = Field(ge=0, le=45)  # degrees, either way
    shift: float = Field(ge=0, le=0.5)  # fraction of the image side, in x and y
    flip: bool  # left-right mirror: brain anatomy is nearly symmetric
    intensity: float = Field(ge=0, le=0.5)  # intensity gain: every pixel times 1 ± this, per slice


class NoiseConfig(_Section):
    """Denoising training: the model sees a slice with coarse Gaussian noise added inside the head and
    learns to give back the clean one, so it cannot simply copy anomalies through (std 0: off)."""

    std: float = Field(ge=0, le=1)
    resolution: int = Field(ge=1, le=256)  # the noise is drawn on a resolution x resolution grid, upsampled


Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]


class TrainConfig(_Section):
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1, le=4096)
    learning_rate: float = Field(gt=0, le=1)
    schedule: Literal["constant", "cosine"]  # of the learning rate; cosine: from learning_rate to 0 over all epochs
    early_stopping_patience: int = Field(ge=0)
    augment: AugmentConfig
    noise: NoiseConfig
    progress: bool
    precision: Precision  # auto: bfloat16 where the CPU or GPU computes it natively (pipeline.hardware)


class RuntimeConfig(_Section):
    """How a stage uses the machine; changes no result, so no stage reruns for it."""

    threads: int = Field(ge=0, le=1024)  # TensorFlow's thread pools; 0: the cores this process may use


class ScoreConfig(_Section):
    """Which anomaly score (`pipeline.scoring`) a slice gets, and where it is read."""

    kind: Literal["mse", "l1", "ssim", "residual_percentile", "symmetry"]
    region: Literal["head", "image"]
    percentile: float = Field(gt=0, le=100)  # residual_percentile and symmetry; 100 = the maximum
    smoothing: float = Field(ge=0, le=16)  # Gaussian sigma (pixels) of the residual before the percentile


class ThresholdConfig(_Section):
    """Which threshold (`pipeline.thresholds`) is applied; calibrate computes and logs all of them."""

    method: Literal["mean_std", "percentile", "f1_optimal", "youden"]
    k: float = Field(ge=0, le=10)  # mean_std: mean + k * std of healthy validation scores
    percentile: float = Field(gt=0, le=100)  # percentile: of healthy validation scores


class EvaluateConfig(_Section):
    n_examples: int = Field(ge=0, le=32)
    bootstrap: int = Field(ge=100, le=100_000)  # resamples behind each 95% confidence interval


class MlflowConfig(_Section):
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


class Paths(_Section):
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
    def detector(self) -> Path:
        """The packaged detector (an MLflow model folder): what `pipeline.predict` uses by default."""
        return self.model / "detector"

    def stage_reports(self, stage: str) -> Path:
        return self.reports / stage

    def run_file(self, stage: str) -> Path:
        """Where a model stage leaves the id of the MLflow run it logged to (a DVC output)."""
        return self.model / "run.json" if stage == "train" else self.stage_reports(stage) / "run.json"


class Settings(_Section):
    seed: int = Field(ge=0, lt=2**32)
    data: DataConfig
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

    def flat_params(self) -> dict[str, str]:
        """Every config value as `section.key` -> string, the shape MLflow params take."""
        return flatten(self.model_dump(mode="json"))


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


def params_section(name: str, section: type[SectionT]) -> SectionT:
    """One validated section of params.yaml: what the last `dvc repro` / `dvc exp run` used, for the
    commands that run outside the pipeline (predict, compare)."""
    return section.model_validate(OmegaConf.to_container(OmegaConf.load(PARAMS_FILE)[name]))


def _describe(error: ValidationError) -> str:
    sources = {"synthetic", "local", "kaggle"}
    lines = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        if len(loc) > 1 and loc[0] == "data" and loc[1] in sources:
            del loc[1]  # the discriminator tag pydantic inserts, not a config key
        got = f" (got {item['input']!r})" if item["type"] != "missing" else ""
        lines.append(f"  {'.'.join(loc)}: {item['msg']}{got}")
    return "invalid config:\n" + "\n".join(lines)


def load_settings(cfg: DictConfig | dict[str, Any]) -> Settings:
    """Validate a composed config; raise ConfigError naming every offending key."""
    if isinstance(cfg, DictConfig):
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as err:
            key = err.full_key
            raise ConfigError(f"config value '{key}' is required: add `{key}=...` to the command "
                              f"(with DVC: `dvc exp run -S {key}=...`)") from None
    try:
        return Settings.model_validate(cfg)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose `conf/` exactly as DVC's Hydra integration does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides or [])
    OmegaConf.resolve(cfg)
    return cfg


def write_params(path: Path = PARAMS_FILE, overrides: list[str] | None = None) -> None:
    """Write `params.yaml` as DVC writes it, so `dvc repro` and `dvc exp run` see the same file."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(path, str(CONF_DIR), None, "config", str(ROOT), overrides or [])


def stage(fn: Callable[[Settings], None]) -> Callable[[], None]:
    """Turn `fn(settings)` into a Hydra entry point that reports user errors without a traceback."""

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    @functools.wraps(fn)
    def main(cfg: DictConfig) -> None:
        from pipeline import hardware  # here, not at the top: `python -m pipeline.config` needs no Keras

        try:
            settings = load_settings(cfg)
            hardware.configure(settings.runtime.threads)
            fn(settings)
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    return main


if __name__ == "__main__":
    write_params(overrides=sys.argv[1:])
    print(f"wrote {PARAMS_FILE.relative_to(ROOT)}")
