"""Precision and threads: `auto` picks bfloat16 only where it is native, a model trains in bfloat16 with
its output and loss in float32 and is saved and scored in float32, and the thread pools follow the
cores the process may use."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.core import hardware
from pipeline.core.config import Settings
from pipeline.core.errors import ConfigError
from pipeline.core.hardware import Gpu, Hardware
from pipeline.core.io import read_json
from pipeline.core.params import ROOT
from pipeline.models import build_model, load_model, with_precision
from pipeline.models.training import fit
from pipeline.stages import download, split, train
from pipeline.stages.entrypoint import compose, load_settings
from tests.conftest import train_config

CPU_BF16 = Hardware("Xeon", frozenset({"amx_bf16", "avx512_bf16"}), ())
CPU_PLAIN = Hardware("Core i5", frozenset(), ())
UNET = {"width": 4, "depth": 2, "batch_norm": True}


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        (CPU_BF16, "mixed_bfloat16"),
        (Hardware("EPYC", frozenset({"avx512_bf16"}), ()), "mixed_bfloat16"),
        (CPU_PLAIN, "float32"),
        (Hardware("Core i5", frozenset(), (Gpu("A100", (8, 0)),)), "mixed_bfloat16"),
        (Hardware("Xeon", frozenset({"amx_bf16"}), (Gpu("T4", (7, 5)),)), "float32"),  # the GPU trains
    ],
)
def test_auto_picks_bfloat16_only_where_it_is_native(machine: Hardware, expected: str) -> None:
    assert hardware.resolve_precision("auto", machine) == expected


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_an_explicit_precision_is_taken_as_given(precision: str) -> None:
    assert hardware.resolve_precision(precision, CPU_PLAIN) == precision


@pytest.mark.parametrize(
    "override", ["train.precision=bfloat16", "train.precision=fp16", "runtime.threads=-1"]
)
def test_a_bad_precision_or_thread_count_is_a_config_error_naming_the_key(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        load_settings(compose([override]))
    assert str(error.value).count("\n") == 1  # the heading and one line for the key


def test_cpu_flags_and_name_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx512f avx512_bf16 sse\n\n"
        "processor\t: 1\nmodel name\t: Test CPU\nflags\t\t: fpu avx512f avx512_bf16 sse\n"
    )
    assert hardware.read_cpu(cpuinfo) == ("Test CPU", frozenset({"avx512_bf16"}))
    assert hardware.read_cpu(tmp_path / "absent")[1] == frozenset()


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2, 1.5 cores
        ({"cpu.max": "max 100000\n"}, None),  # v2, no quota
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no quota
        ({}, None),
    ],
)
def test_the_cgroup_cpu_quota_is_read(tmp_path: Path, files: dict[str, str], cores: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert hardware.cgroup_cpu_limit(tmp_path, tmp_path / "no-such-cgroup-file") == cores


def test_available_cores_follow_the_quota_not_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: 1.5)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert hardware.available_cores() == 2
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: None)
    assert hardware.available_cores() == 64


def test_configure_sizes_tensorflows_thread_pools_in_a_fresh_process() -> None:
    code = (
        "from pipeline.core import hardware; n = hardware.configure(1); import tensorflow as tf; "
        "print(n, tf.config.threading.get_intra_op_parallelism_threads(), "
        "tf.config.threading.get_inter_op_parallelism_threads(), hardware.threads())"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "1", "1", "1"]


def test_a_bfloat16_model_computes_in_bfloat16_with_its_output_and_loss_in_float32() -> None:
    keras.utils.set_random_seed(0)
    model = build_model("unet", (32, 32, 1), UNET, "mixed_bfloat16")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert {layer.compute_dtype for layer in convs[:-1]} == {"bfloat16"}
    assert convs[-1].name == "reconstruction" and convs[-1].compute_dtype == "float32"
    assert {w.dtype for w in model.weights} == {"float32"}  # the weights Adam updates stay float32
    images = np.random.default_rng(0).random((16, 32, 32, 1), dtype=np.float32)
    result = fit(model, images[:12], images[12:], train_config(epochs=2, noise=0.1), seed=0, callbacks=[])
    assert np.isfinite(result.history["loss"]).all()
    assert model.predict(images[:2], verbose=0).dtype == np.float32
    assert keras.config.dtype_policy().name == "float32"  # building left the global policy alone


def test_a_bfloat16_trained_model_is_scored_in_float32(tmp_path: Path) -> None:
    """The decision the README's benchmark rests on: the saved model computes in float32, with the
    trained weights unchanged, wherever it is loaded."""
    keras.utils.set_random_seed(0)
    trained = build_model("unet", (32, 32, 1), UNET, "mixed_bfloat16")
    exported = with_precision(trained, "unet", UNET, "float32")
    exported.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    assert {layer.compute_dtype for layer in loaded.layers if layer.weights} == {"float32"}
    for before, after in zip(trained.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    images = np.random.default_rng(1).random((4, 32, 32, 1), dtype=np.float32)
    in_float32, in_bfloat16 = loaded.predict(images, verbose=0), trained.predict(images, verbose=0)
    assert not np.array_equal(in_float32, in_bfloat16)  # the two precisions do differ ...
    np.testing.assert_allclose(in_float32, in_bfloat16, atol=0.02)  # ... by bfloat16's rounding


@pytest.mark.parametrize(("machine", "precision"), [(CPU_PLAIN, "float32"), (CPU_BF16, "mixed_bfloat16")])
def test_the_train_stage_logs_the_precision_it_resolved(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, machine: Hardware, precision: str
) -> None:
    """On a machine without native bfloat16 `auto` falls back to float32; either way the model on disk
    computes in float32 and the run says what training used and where. The built-in PNG slices hold one
    window: the model reads one channel, and the run logs no extra Hounsfield windows."""
    monkeypatch.setattr(hardware, "detect", lambda: machine)
    settings = make_settings()
    download.run(settings)
    split.run(settings)
    train.run(settings)
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    run = MlflowClient().get_run(read_json(settings.paths.run_file("train"))["run_id"])
    assert run.data.params["train.precision"] == "auto" and run.data.params["precision"] == precision
    assert run.data.tags["hardware"].startswith(machine.cpu)
    saved = load_model(settings.paths.model_file)
    assert {layer.compute_dtype for layer in saved.layers if layer.weights} == {"float32"}
    assert settings.preprocess.channels == 3 and saved.input_shape[-1] == 1
    assert run.data.params["preprocess.extra_windows"] == "[]"
