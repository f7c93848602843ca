"""The Hydra config: every option composes and validates, params.yaml is its composition, and bad
values fail early with a message that names the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from pipeline.config import CONF_DIR, PARAMS_FILE, compose, load_settings, write_params
from pipeline.errors import ConfigError
from pipeline.models import available, build_model

DATA_OPTIONS = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
MODEL_OPTIONS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def test_params_yaml_is_the_composition_of_conf(tmp_path: Path) -> None:
    """`dvc repro` reads params.yaml; it must say what conf/ says (regenerate: python -m pipeline.config)."""
    fresh = tmp_path / "params.yaml"
    write_params(fresh)
    assert yaml.safe_load(PARAMS_FILE.read_text()) == yaml.safe_load(fresh.read_text())


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_every_data_source_composes(option: str, tmp_path: Path) -> None:
    overrides = [f"data={option}"] + ([f"data.path={tmp_path}"] if option == "local" else [])
    assert load_settings(compose(overrides)).data.source == option


@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_every_model_config_names_a_registered_model(option: str) -> None:
    assert load_settings(compose([f"model={option}"])).model.name == option
    assert option in available()


@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_every_model_builds_from_its_config(option: str) -> None:
    """Each variant's config holds exactly its builder's parameters (offline: no ImageNet download)."""
    settings = load_settings(compose([f"model={option}", "experiment=smoke"]))
    params = {**settings.model.params, **({"weights": None} if "weights" in settings.model.params else {})}
    size = settings.preprocess.image_size
    assert build_model(settings.model.name, (size, size, 1), params).output_shape == (None, size, size, 1)


@pytest.mark.parametrize(("search", "model"), [("optuna", "vae"), ("optuna_ae", "cae"), ("optuna_dae", "unet")])
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


@pytest.mark.parametrize(("override", "key"), [
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
])
def test_out_of_range_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(compose([override]))


def test_local_source_needs_an_existing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.path.*required"):
        load_settings(compose(["data=local"]))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(compose(["data=local", f"data.path={tmp_path / 'nowhere'}"]))
