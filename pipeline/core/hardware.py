"""What a stage runs on, and how TensorFlow uses it.

- **Precision.** Training runs in bfloat16 where the processor computes it natively (a CPU with AMX or
  AVX512-BF16, a GPU of compute capability 8.0 or newer), in float32 elsewhere: 1.4-2x the training
  speed on AVX512-BF16, more with AMX (docs/performance.md). Weights stay float32 under every precision
  (Keras' mixed policies), so a model trained in bfloat16 is saved, scored and served in float32.
- **Threads.** TensorFlow sizes its thread pools by the host's CPU count; in a container or a batch job
  the process may use far fewer cores (its cgroup CPU quota, its CPU affinity), and too many threads on
  too few cores slow every step. The pools are sized to the cores this process may really use.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras

log = logging.getLogger(__name__)

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bfloat16 arithmetic
GPU_BF16_CAPABILITY = (8, 0)  # Ampere and newer
CGROUP_ROOT = Path("/sys/fs/cgroup")

_threads: int | None = None  # what `configure` set in this process


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        return self.compute_capability >= GPU_BF16_CAPABILITY


@dataclass(frozen=True)
class Hardware:
    cpu: str  # the CPU's model name
    cpu_flags: frozenset[str]  # the bfloat16 ones among its feature flags
    gpus: tuple[Gpu, ...]

    @property
    def cpu_bf16(self) -> bool:
        return bool(self.cpu_flags)

    def describe(self) -> str:
        """One line for the MLflow tag: the device that trains, and what it offers."""
        if self.gpus:
            return ", ".join(
                f"{gpu.name} (compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]})"
                for gpu in self.gpus
            )
        flags = f" ({', '.join(sorted(self.cpu_flags))})" if self.cpu_flags else ""
        return f"{self.cpu}{flags}, {threads()} threads"


def read_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, frozenset[str]]:
    """The CPU's model name and its bfloat16 feature flags (none where /proc/cpuinfo is absent)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("model name", platform.machine()), frozenset(fields.get("flags", "").split()) & set(
        CPU_BF16_FLAGS
    )


def read_gpus() -> tuple[Gpu, ...]:
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append(
            Gpu(details.get("device_name", device.name), tuple(details.get("compute_capability", (0, 0))))
        )
    return tuple(gpus)


@functools.cache
def detect() -> Hardware:
    return Hardware(*read_cpu(), read_gpus())


def resolve_precision(requested: str, hardware: Hardware) -> str:
    """`auto`: bfloat16 where the device that trains computes it natively, float32 elsewhere; any other
    value is taken as it is (with a warning where it would run emulated, and so slowly)."""
    native_bf16 = all(gpu.bf16 for gpu in hardware.gpus) if hardware.gpus else hardware.cpu_bf16
    if requested == "auto":
        return "mixed_bfloat16" if native_bf16 else "float32"
    if requested == "mixed_bfloat16" and not native_bf16:
        log.warning(
            "train.precision=mixed_bfloat16 on %s, which has no native bfloat16: expect it to be "
            "slower than float32",
            hardware.describe(),
        )
    if requested == "mixed_float16" and not hardware.gpus:
        log.warning(
            "train.precision=mixed_float16 on a CPU: float16 is emulated there, expect it to be "
            "slower than float32"
        )
    return requested


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Layers built inside the block compute in `name` (weights stay float32 under a mixed policy)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, own_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), None
    when there is none."""
    try:
        relative = next(
            (line.split(":", 2)[2] for line in own_cgroup.read_text().splitlines() if line.startswith("0::")),
            "/",
        )
    except OSError:
        relative = "/"
    for folder in (root / relative.lstrip("/"), root):  # its own cgroup first (v2 nests them)
        try:
            quota, period = (folder / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        except (OSError, ValueError):
            pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(limit))) if limit else cores


def threads() -> int:
    """The threads TensorFlow and the input pipeline use in this process."""
    return _threads or available_cores()


def configure(requested_threads: int) -> int:
    """Size TensorFlow's intra- and inter-op thread pools (0: the available cores) and let each GPU take
    memory as needed instead of all of it; before TensorFlow runs its first op. Returns the threads."""
    import tensorflow as tf

    global _threads
    count = requested_threads or available_cores()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(count)
        tf.config.threading.set_inter_op_parallelism_threads(count)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
        _threads = count
    except RuntimeError:  # TensorFlow already started in this process (a sweep's later job): keep its pools
        current = tf.config.threading.get_intra_op_parallelism_threads()
        _threads = current or _threads or count
        if current and current != count:
            log.warning(
                "TensorFlow already runs with %d threads in this process; runtime.threads=%d "
                "applies from the next process on",
                current,
                count,
            )
    return _threads
