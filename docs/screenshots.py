"""The README's picture of MLflow's runs list (docs/images/mlflow-runs.png), taken in a real browser so
that it shows what a user sees: `make screenshots`.

It runs a small real sweep (`experiment=smoke`, a few models) into a throwaway MLflow store, serves
that store with MLflow's basic-auth app on 127.0.0.1 (an admin password made for this run alone: every
account of the machine reaches 127.0.0.1), opens the model experiment's runs table in headless Chromium
(Debian's `chromium` unless CHROMIUM names another; Playwright drives it, no browser download) and saves
the table, cropped, as a PNG. Takes a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.core.config import MlflowConfig
from pipeline.core.params import ROOT, params_section
from pipeline.team.stack import free_port

RUNS_IMAGE = ROOT / "docs" / "images" / "mlflow-runs.png"
MODELS = ("cae", "unet", "vae")  # one run each in the picture
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ADMIN = "admin"
VIEWPORT = {"width": 1440, "height": 720}
SERVER_START_S = 120  # the first start creates both databases' tables
TABLE_WAIT_MS = 60_000
SETTLE_MS = 1_000  # the closed panels' animations, the grid's layout (it polls the server: never idle)
NAME_COLUMN = "[col-id='attributes.`Run Name`']"  # ag-grid's cells (and header) of the runs' names


def run_sweep(store: Path) -> str:
    """One smoke pipeline per model of MODELS into a new SQLite store under `store`; its tracking URI."""
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_RUN_NAME"}
    env["MLFLOW_TRACKING_URI"] = tracking_uri  # the environment's own store would take precedence
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "-m",
            "experiment=smoke",
            f"model={','.join(MODELS)}",
            f"mlflow.tracking_uri={tracking_uri}",
            f"mlflow.artifact_root={store / 'artifacts'}",
            f"hydra.sweep.dir={store / 'multirun'}",
        ],
        cwd=ROOT,
        env=env,
        check=True,
    )
    return tracking_uri


@contextlib.contextmanager
def served(store: Path, tracking_uri: str, password: str) -> Iterator[str]:
    """`mlflow server --app-name basic-auth` on the store, on a free port of 127.0.0.1, its admin's
    password `password`; yields its URL and stops it (its whole process group) afterwards."""
    auth_config = store / "basic_auth.ini"
    auth_config.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{store / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (store / "server.log").open("w")
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth"),
            *("--backend-store-uri", tracking_uri, "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", "1"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_up(url, server, store / "server.log")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # the server may have stopped on its own
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"error: mlflow server stopped:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError):
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        time.sleep(1)
    sys.exit(f"error: mlflow server did not answer within {SERVER_START_S} s:\n{log.read_text()[-2000:]}")


def photograph_runs(url: str, experiment_id: str, password: str, runs: int, out: Path) -> None:
    """The experiment's runs table in headless Chromium, logged in as the admin: the side panels
    closed, the name column wide enough for whole names, cropped to the header and the `runs` rows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(
                viewport=VIEWPORT, http_credentials={"username": ADMIN, "password": password}
            )
            page = context.new_page()
            page.goto(f"{url}/#/experiments/{experiment_id}/runs")
            names = page.locator(f"[role=gridcell]{NAME_COLUMN}")
            names.nth(runs - 1).wait_for(timeout=TABLE_WAIT_MS)
            page.get_by_role("button", name="Close", exact=True).click()  # the assistant's chat panel
            page.get_by_role("button", name="Toggle sidebar").click()
            page.wait_for_timeout(SETTLE_MS)
            header = page.locator(f".ag-header-cell{NAME_COLUMN}")
            header.locator(".ag-header-cell-resize").dblclick()  # ag-grid: fit the column to its names
            page.mouse.move(0, 0)  # no header lit up by the pointer
            page.wait_for_timeout(SETTLE_MS)
            grid = page.locator("[role=grid]").first.bounding_box()
            top = header.bounding_box()["y"]
            last = names.nth(runs - 1).bounding_box()
            columns = page.locator(".ag-header-cell").last.bounding_box()
            right = min(columns["x"] + columns["width"], grid["x"] + grid["width"])
            clip = {
                "x": grid["x"],
                "y": top,
                "width": right - grid["x"],
                "height": last["y"] + last["height"] - top,
            }
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=out, clip=clip)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docs.screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RUNS_IMAGE, help="the PNG (default: %(default)s)")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        sys.exit(f"error: no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    experiment = params_section("mlflow", MlflowConfig).experiment
    with tempfile.TemporaryDirectory(prefix="screenshots-") as folder:
        store = Path(folder)
        tracking_uri = run_sweep(store)
        experiment_id = MlflowClient(tracking_uri).get_experiment_by_name(experiment).experiment_id
        password = secrets.token_urlsafe(24)
        with served(store, tracking_uri, password) as url:
            photograph_runs(url, experiment_id, password, len(MODELS), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
