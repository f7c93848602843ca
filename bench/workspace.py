"""A throw-away copy of the project as a git repository, for end-to-end runs of the DVC pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.core.params import ROOT
from pipeline.stages import STAGES

__all__ = ["REAL_DATA", "STAGES", "copy_project", "run"]
REAL_DATA = ROOT.parent / "shared" / "data" / "brain-ct"  # the real sample, beside the repository
PROJECT_FILES = ("dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml")
PROJECT_DIRS = ("conf", "pipeline", ".dvc")


def run(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    """Run a command in the copy with this interpreter's tools first on PATH, the variables `env` set
    (MLFLOW_TRACKING_URI only from there); fail with its output."""
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **(env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def copy_project(dest: Path, overrides: Sequence[str] = ()) -> Path:
    """Copy the pipeline's files to `dest`, compose params.yaml with `overrides`, and commit."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy(ROOT / name, dest / name)
    for folder in PROJECT_DIRS:
        shutil.copytree(
            ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache")
        )
    run(dest, "git", "init", "-q")
    run(dest, "git", "config", "user.name", "pipeline")  # `dvc exp run` commits experiments
    run(dest, "git", "config", "user.email", "pipeline@localhost")
    run(dest, sys.executable, "-m", "pipeline.stages.entrypoint", *overrides)
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-qm", "workspace")
    return dest
