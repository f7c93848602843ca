"""The Hydra config: every option composes and validates, params.yaml is its composition, and bad
values fail early with a message that names the key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf
from pydantic import Field

from pipeline.core import codebase
from pipeline.core.config import ArchiveLimits, Settings
from pipeline.core.errors import ConfigError
from pipeline.core.params import PARAMS_FILE
from pipeline.data import sources
from pipeline.data.guards import Limits
from pipeline.data.sources import SOURCES, Rejects, SourceSection, fetch
from pipeline.detection.scoring import SCORES
from pipeline.detection.thresholds import THRESHOLD_RULES
from pipeline.models import MODELS, build_model
from pipeline.stages.entrypoint import CONF_DIR, compose, load_settings, write_params

DATA_OPTIONS = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
MODEL_OPTIONS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def test_params_yaml_is_the_composition_of_conf(tmp_path: Path) -> None:
    """`dvc repro` reads params.yaml; it must say what conf/ says (regenerate: make params)."""
    fresh = tmp_path / "params.yaml"
    write_params(fresh)
    assert yaml.safe_load(PARAMS_FILE.read_text()) == yaml.safe_load(fresh.read_text())


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_every_data_source_composes(option: str, tmp_path: Path) -> None:
    overrides = [f"data={option}"] + ([f"data.path={tmp_path}"] if option == "local" else [])
    assert load_settings(compose(overrides)).data.source == option


def test_a_labels_csv_is_given_without_a_plus(tmp_path: Path) -> None:
    """The README's `data.labels=labels.csv`: the key is in conf/data/local.yaml, so no `+` is needed."""
    (tmp_path / "labels.csv").write_text("path,class\n")
    overrides = ["data=local", f"data.path={tmp_path}", f"data.labels={tmp_path / 'labels.csv'}"]
    assert load_settings(compose(overrides)).data.labels == (tmp_path / "labels.csv").resolve()


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_the_smoke_experiment_works_with_every_data_source(option: str, tmp_path: Path) -> None:
    """experiment=smoke makes the run small whatever the data; the built-in data is made small too."""
    overrides = [f"data={option}"] + ([f"data.path={tmp_path}"] if option == "local" else [])
    full, smoke = (load_settings(compose([*overrides, *extra])) for extra in ([], ["experiment=smoke"]))
    assert smoke.data.source == option and smoke.preprocess.image_size == 32 and smoke.train.epochs == 2
    if option == "synthetic":
        assert smoke.data.n_healthy < full.data.n_healthy and smoke.data.max_size < full.data.max_size
    elif option == "synthetic_volumes":
        assert smoke.data.patients < full.data.patients and smoke.data.size < full.data.size
    else:
        assert smoke.data == full.data  # a user's data is taken as given


def test_the_smoke_experiment_keeps_the_data_keys_given() -> None:
    assert load_settings(compose(["experiment=smoke", "data.n_healthy=70"])).data.n_healthy == 70


@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_every_model_config_names_a_registered_model(option: str) -> None:
    assert load_settings(compose([f"model={option}"])).model.name == option
    assert option in MODELS


@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_every_model_builds_from_its_config(option: str) -> None:
    """Each variant's config holds exactly its builder's parameters (offline: no ImageNet download)."""
    settings = load_settings(compose([f"model={option}", "experiment=smoke"]))
    params = {**settings.model.params, **({"weights": None} if "weights" in settings.model.params else {})}
    size = settings.preprocess.image_size
    assert build_model(settings.model.name, (size, size, 1), params).output_shape == (None, size, size, 1)


@pytest.mark.parametrize(
    ("search", "model"), [("optuna", "vae"), ("optuna_ae", "cae"), ("optuna_dae", "unet")]
)
def test_optuna_search_space_names_existing_keys(search: str, model: str) -> None:
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = hydra_compose("config", overrides=[f"hparams_search={search}"], return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == "maximize"
    assert cfg.hydra.sweeper.sampler.seed == cfg.seed
    assert cfg.model.name == model
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, f"{key} is not a config key"


def test_settings_flatten_to_mlflow_params() -> None:
    params = load_settings(compose()).flat_params()
    assert params["train.learning_rate"] == "0.001"
    assert params["model.name"] == "unet" and params["preprocess.head.mask"] == "True"
    assert all(isinstance(v, str) for v in params.values())


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=0", "train.epochs"),
        ("train.learning_rate=-1", "train.learning_rate"),
        ("preprocess.image_size=8", "preprocess.image_size"),
        ("preprocess.dicom_window.width=0", "preprocess.dicom_window.width"),
        ("split.healthy.val=0", "split.healthy.val"),
        ("threshold.k=-1", "threshold.k"),
        ("score.kind=psnr", "score.kind"),
        ("preprocess.head.threshold=1.5", "preprocess.head.threshold"),
        ("train.augment.rotation=90", "train.augment.rotation"),
        ("mlflow.model_alias=latest", "mlflow.model_alias"),
        ("mlflow.model_alias=v2", "mlflow.model_alias"),
        ("+train.epoch=3", "train.epoch"),  # a typo is an error, not a silently ignored key
        ("data.min_size=600", "data"),
        ("model.width=0", "model.width"),
        ("model.depth=9", "model.depth"),
        ("+model.filters=8", "model.filters: not a parameter of model 'unet'"),
        ("preprocess.image_size=120", "preprocess.image_size must be divisible by 16, got 120"),
        ("model=vae model.beta=-1", "model.beta"),
    ],
)
def test_out_of_range_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(compose(override.split()))


@pytest.mark.parametrize(
    ("override", "registry"),
    [
        ("model.name=nope", MODELS),
        ("score.kind=nope", SCORES),
        ("threshold.method=nope", THRESHOLD_RULES),
    ],
)
def test_every_registry_rejects_unknown_names_with_the_available_ones(override: str, registry) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(compose([override]))
    assert str(raised.value) == (
        f"{registry.key}: unknown {registry.kind} 'nope' (available: {', '.join(registry.names())})"
    )


@pytest.mark.parametrize("kind", ["auto", "mse"])
def test_the_score_kind_is_auto_or_a_registered_one(kind: str) -> None:
    assert load_settings(compose([f"score.kind={kind}"])).score.kind == kind


def test_the_config_imports_no_other_module_of_the_pipeline() -> None:
    """Every component imports `pipeline.core.config` for its section, so the config imports none of them,
    not even inside a function (no import cycle): the names that pick a component are checked where the
    settings are loaded (`pipeline.stages.components`)."""
    assert codebase.closure("pipeline.core.config")[0] == {
        "pipeline",
        "pipeline.core",
        "pipeline.core.config",
    }


def test_unknown_data_source_lists_the_registered_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=r"data\.source: unknown data source 'nope' "
        r"\(available: kaggle, local, synthetic, synthetic_volumes\)",
    ):
        load_settings({**OmegaConf.to_container(compose()), "data": {"source": "nope"}})


def test_every_registered_data_source_has_its_config_group() -> None:
    assert SOURCES.names() == DATA_OPTIONS


class FtpData(SourceSection):
    host: str
    port: int = Field(default=21, ge=1, le=65535)


@pytest.fixture
def ftp_source() -> Iterator[list[FtpData]]:
    """A data source registered for one test only, config class and fetcher in one registration, with
    pipeline.core.config untouched; yields the configs its fetcher was given."""
    fetched: list[FtpData] = []

    @sources.register("test_ftp", FtpData)
    def fetch_ftp(data: FtpData, out_dir: Path, seed: int, archive: ArchiveLimits, limits: Limits) -> Rejects:
        fetched.append(data)
        return []

    yield fetched
    del SOURCES._entries["test_ftp"]


def _with_data(data: dict) -> Settings:
    return load_settings({**OmegaConf.to_container(compose()), "data": data})


def test_a_registered_source_is_configured_by_its_own_config_class(
    ftp_source: list[FtpData], tmp_path: Path
) -> None:
    settings = _with_data({"source": "test_ftp", "host": "ct.example.org", "port": "2121"})
    assert settings.data == FtpData(source="test_ftp", host="ct.example.org", port=2121)
    assert {key: value for key, value in settings.flat_params().items() if key.startswith("data.")} == {
        "data.source": "test_ftp",
        "data.host": "ct.example.org",
        "data.port": "2121",
    }
    assert fetch(settings.data, tmp_path, 0) == [] and ftp_source == [settings.data]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"host": "ct.example.org", "port": "many"}, "data.port: Input should be a valid integer"),
        ({"host": "ct.example.org", "port": 0}, "data.port: Input should be greater than or equal to 1"),
        ({"port": 21}, "data.host: Field required"),
        ({"host": "ct.example.org", "user": "me"}, "data.user: Extra inputs are not permitted"),
    ],
)
def test_a_registered_sources_keys_are_checked_where_the_settings_load(
    ftp_source: list[FtpData], data: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=f"^invalid config:\n  {re.escape(message)}"):
        _with_data({"source": "test_ftp", **data})


def test_local_source_needs_an_existing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.path.*required"):
        load_settings(compose(["data=local"]))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(compose(["data=local", f"data.path={tmp_path / 'nowhere'}"]))
