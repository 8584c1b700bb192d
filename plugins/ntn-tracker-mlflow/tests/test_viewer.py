"""The viewer the README names: after the plugin's install, `mlflow ui` serves the runs the plugin recorded."""

import os
import re
import signal
import subprocess
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import requests
from conftest import MLFLOW, free_port
from ntn.tracking.testing import run_conformance
from ntn_tracker_mlflow import MlflowTracker

REPO = Path(__file__).resolve().parents[3]
MLFLOW_DISTRIBUTIONS = ("mlflow", "mlflow-skinny", "mlflow-tracing")


def test_the_plugin_brings_the_full_mlflow_pinned_with_its_client_in_constraints():
    project = tomllib.loads((REPO / "plugins/ntn-tracker-mlflow/pyproject.toml").read_text())["project"]
    required = {re.match(r"[A-Za-z0-9_.-]+", spec)[0].lower() for spec in project["dependencies"]}
    assert "mlflow" in required  # not mlflow-skinny alone, which has no server: `No module named 'flask'`
    pins = dict(
        line.split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if re.match(r"mlflow\S*==", line)
    )
    assert set(pins) == set(MLFLOW_DISTRIBUTIONS)
    assert {version(name) for name in MLFLOW_DISTRIBUTIONS} == set(pins.values()), pins  # one release, installed


def test_mlflow_ui_serves_the_runs_recorded_into_the_default_store(tmp_path):
    sent = run_conformance(MlflowTracker, experiment_name="viewer_seed0")  # no URI: the default ./mlflow.db
    assert (tmp_path / "mlflow.db").is_file()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen(
            [MLFLOW, "ui", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],  # the README's command
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while ui.poll() is None and time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        assert ui.poll() is None, f"mlflow ui exited {ui.returncode}: {log.read_text()[-2000:]}"
        page = requests.get(url, timeout=30)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert "<html" in page.text.lower()
        experiments = requests.post(f"{url}/api/2.0/mlflow/experiments/search", json={"max_results": 100}, timeout=30)
        ids = [e["experiment_id"] for e in experiments.json()["experiments"]]
        runs = requests.post(f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": ids}, timeout=30).json()
        names = {run["info"]["run_name"]: run["info"]["status"] for run in runs["runs"]}
        assert names[sent.experiment_name] == "FAILED", names  # the kit's run ends failed
    finally:
        os.killpg(ui.pid, signal.SIGTERM)  # the server and its worker
        try:
            ui.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
