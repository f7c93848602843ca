"""How runs end: SIGTERM closes the stage's MLflow run, runs orphaned by a killed process are marked,
concurrent `python -m pipeline` runs get output folders of their own, and outputs follow the umask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from PIL import Image

from pipeline.core import lifecycle
from pipeline.core.config import Settings
from pipeline.core.params import ROOT
from pipeline.stages import tracking
from pipeline.stages.entrypoint import CONF_DIR, RUN_TOKEN
from tests.conftest import TINY, tmp_overrides

MODULE_START_S = 60  # a Python process that imports TensorFlow, on a loaded two-core machine


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _runs(tmp_path: Path, experiment: str) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    return MlflowClient().search_runs([mlflow.get_experiment_by_name(experiment).experiment_id])


def test_sigterm_closes_the_stage_run_as_killed_with_the_reason(tmp_path: Path) -> None:
    """`kill`, `timeout`, a CI cancel: the open run is KILLED with the reason, temporary outputs go."""
    command = [sys.executable, "-m", "pipeline.stages.download", *TINY, *tmp_overrides(tmp_path)]
    command += ["data.n_healthy=100000", "runtime.threads=1"]  # long enough to be caught generating
    process = subprocess.Popen(command, cwd=tmp_path, env=_env(), stderr=subprocess.PIPE, text=True)
    data = tmp_path / "data"
    deadline = time.monotonic() + MODULE_START_S
    while not any(data.glob(".tmp-*-raw/Healthy/*.png")):  # the run is open while the data is made
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=MODULE_START_S)
    assert process.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1] == "error: terminated by SIGTERM"
    (run,) = _runs(tmp_path, "brain-ct-data")
    assert run.info.status == "KILLED" and run.data.tags["error"] == "Terminated: terminated by SIGTERM"
    assert run.data.tags["pid"] == str(process.pid) and run.data.tags["host"] == lifecycle.HOST
    assert not list(data.glob(".tmp-*")) and not (data / "raw").exists()


def test_runs_left_running_by_a_dead_process_are_marked_by_the_next_run(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    tracking.setup(settings.mlflow)
    experiment = tracking.experiment_id(settings.mlflow.data_experiment, settings.mlflow)
    ended = subprocess.Popen(["true"])
    ended.wait()
    client = MlflowClient()
    owners = {
        "dead": {"host": lifecycle.HOST, "pid": str(ended.pid)},
        "alive": lifecycle.owner(),
        "elsewhere": {"host": "another-host", "pid": str(ended.pid)},
    }
    runs = {
        name: client.create_run(experiment, tags={"stage": "download", **tags})
        for name, tags in owners.items()
    }
    with tracking.data_run(settings, "download", {}):
        pass
    status = {name: client.get_run(run.info.run_id) for name, run in runs.items()}
    assert status["dead"].info.status == "KILLED"
    assert f"process {ended.pid} on {lifecycle.HOST} ended" in status["dead"].data.tags["error"]
    assert status["alive"].info.status == status["elsewhere"].info.status == "RUNNING"


def test_an_output_folder_name_is_unique_to_its_process() -> None:
    """Two runs started in the same second differ in the token at the end of their folder."""
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = hydra_compose("config", return_hydra_config=True)
    for mode in ("run", "sweep"):
        assert OmegaConf.select(cfg, f"hydra.{mode}.dir").endswith(f"-{RUN_TOKEN}")
    other = subprocess.run(
        [sys.executable, "-c", "from pipeline.stages.entrypoint import RUN_TOKEN; print(RUN_TOKEN)"],
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
    )
    assert other.stdout.strip() != RUN_TOKEN


def test_concurrent_pipelines_get_folders_of_their_own(tmp_path: Path) -> None:
    """Two `python -m pipeline` at once (here both refused at validation, after Hydra made the folder)."""
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline",
                *TINY,
                *tmp_overrides(tmp_path / str(i)),
                "train.epochs=0",
            ],
            cwd=tmp_path,
            env=_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for process in processes:
        _, err = process.communicate(timeout=2 * MODULE_START_S)
        assert process.returncode == 1 and "train.epochs" in err
    folders = list((tmp_path / "outputs").glob("*/*"))
    assert len(folders) == 2 and all((folder / ".hydra" / "config.yaml").is_file() for folder in folders)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_modes_the_umask_gives(umask: int, packaged_detector: Path, tmp_path: Path) -> None:
    """predict's CSV and figures, and a folder written whole (as `models/detector`), as the user's
    umask says: another account in the group (or everyone, with 022) can read them."""
    image = tmp_path / "slice.png"
    Image.new("L", (40, 40), 90).save(image)
    out = tmp_path / "out"
    script = (
        "import sys; from pathlib import Path\n"
        "from pipeline import predict\nfrom pipeline.stages import packaging\n"
        "from pipeline.core.io import atomic_dir\n"
        "image, detector, out = sys.argv[1:]\n"
        "predict.main([image, '--model', detector, '--out', f'{out}/scores.csv',"
        " '--heatmaps', f'{out}/heatmaps'])\n"
        "with atomic_dir(Path(out) / 'detector') as saved:\n"
        "    packaging.save(packaging.load_detector(detector), saved)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(image), str(packaged_detector), str(out)],
        check=True,
        env=_env(),
        preexec_fn=lambda: os.umask(umask),
        capture_output=True,
    )
    written = [out, *out.rglob("*")]
    assert (out / "scores.csv").is_file() and (out / "detector" / "MLmodel").is_file()
    wrong = {
        str(path.relative_to(tmp_path)): oct(path.stat().st_mode & 0o777)
        for path in written
        if path.stat().st_mode & 0o777 != (0o777 if path.is_dir() else 0o666) & ~umask
    }
    assert not wrong
