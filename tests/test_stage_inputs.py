"""The data stages' inputs (`pipeline.stages.DATA_INPUTS`): a sweep's jobs share prepared data exactly
when those agree, and the stages log them to MLflow (tests/test_dvc_yaml.py checks dvc.yaml's `params`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline import __main__ as app
from pipeline.core.config import Settings
from pipeline.stages import DATA_INPUTS, DATA_KEYS, DATA_STAGES, params_of
from pipeline.stages.entrypoint import compose, load_settings

OTHER_DATA = [
    "preprocess.head.threshold=0.2",
    "preprocess.max_pixels=1000000",
    "preprocess.max_voxels=1000000",
    "preprocess.dicom_window.level=50",
    "archive.max_ratio=50",
    "data.n_healthy=70",
    "split.near_duplicate_distance=3",
    "seed=7",
]


def _settings(tmp_path: Path, *overrides: str) -> Settings:
    return load_settings(compose([*overrides, *(f"paths.{k}={tmp_path / k}" for k in app.SHARED_PATHS)]))


@pytest.mark.parametrize("override", OTHER_DATA)
def test_jobs_with_other_data_inputs_get_other_data_folders(override: str) -> None:
    assert app._data_folder(compose([override])) != app._data_folder(compose())


@pytest.mark.parametrize("override", ["preprocess.image_size=64", "preprocess.head.crop=false", "model=cae"])
def test_jobs_that_differ_in_no_data_input_share_the_data_folder(override: str) -> None:
    assert app._data_folder(compose([override])) == app._data_folder(compose())


@pytest.mark.parametrize("override", OTHER_DATA)
def test_prepared_data_is_made_again_for_other_data_inputs(
    override: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prepared.json holds the inputs the data was made with: other inputs, a new download and split."""
    ran: list[str] = []
    monkeypatch.setattr(app, "runner", lambda stage: lambda settings: ran.append(stage))
    for overrides in ([], [], [override]):
        app.prepare_data(_settings(tmp_path, *overrides))
    assert ran == [*DATA_STAGES, *DATA_STAGES]  # the second call found its data prepared


def test_every_data_input_is_a_config_key() -> None:
    cfg = compose()
    assert all(OmegaConf.select(cfg, key) is not None for key in DATA_KEYS)


def test_a_data_stage_logs_the_values_of_its_inputs(tmp_path: Path) -> None:
    params = params_of(_settings(tmp_path), DATA_INPUTS["download"])
    assert params["preprocess.head.threshold"] == "0.1" and params["archive.max_ratio"] == "100.0"
    assert params["data.source"] == "synthetic" and params["seed"] == "42"
    assert "preprocess.image_size" not in params and "preprocess.head.crop" not in params
    assert set(params_of(_settings(tmp_path), DATA_INPUTS["split"])) == {
        key for key in _settings(tmp_path).flat_params() if key == "seed" or key.startswith("split.")
    }
