"""Stage entry points: user errors print one line and exit non-zero; a failed stage loses nothing."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import download
from pipeline.config import ROOT, Settings
from pipeline.errors import DataError


def test_a_config_error_is_one_line_not_a_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.download", "data=local"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert "error: config value 'data.path' is required" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_failed_download_keeps_the_previous_data(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../outside.png", b"x")
    settings = make_settings("data=local", f"data.path={archive}", base=())
    previous = settings.paths.raw / "Healthy" / "kept.png"
    previous.parent.mkdir(parents=True)
    previous.write_bytes(b"earlier download")
    with pytest.raises(DataError, match="outside"):
        download.run(settings)
    assert previous.read_bytes() == b"earlier download"
    assert [p.name for p in settings.paths.raw.parent.iterdir()] == ["raw"]  # no temporary left behind
