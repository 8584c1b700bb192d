"""Runs in MLflow's own local store that are complete or say why not: its creation by launches at once,
runs whose process or server went away (read back with MLflow's client)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[3]
SMALL = {"DATASET": "synthetic", "N_SAMPLES": "200", "SEEDS": "0", "N_EPOCHS": "2", "TRACKER_BACKEND": "mlflow"}


def launch(cwd: Path, **env: str) -> subprocess.Popen:
    """`python -m experiments.train mpo2` in `cwd`, this repository's experiments."""
    ours = ("MLFLOW_TRACKING_URI", "TRACKER_DIR", "EXPERIMENT_NAME", "WORKERS")
    environ = {k: v for k, v in os.environ.items() if k not in ours} | SMALL | env
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "experiments.train", "mpo2"]
    return subprocess.Popen(command, cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_launches_at_once_on_a_fresh_default_store_all_record_their_runs(tmp_path):
    """Failed on main: one of two launches was refused with a 3-line SQL error (the schema's creation raced)."""
    names = [f"at_once_{i}" for i in range(3)]
    processes = [launch(tmp_path, EXPERIMENT_NAME=name) for name in names]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in names:
        (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert run.info.status == "FINISHED" and run.info.run_name == f"{name}_seed0"
    assert sorted(p.name for p in tmp_path.iterdir() if "lock" in p.name) == []  # no lock file left


def test_a_run_whose_process_was_killed_is_ended_failed_by_the_next_run_of_its_experiment(tmp_path):
    """Failed on main: the killed launch's run stayed RUNNING for good, half its metrics recorded."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    killed = launch(tmp_path, N_EPOCHS="100000")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and killed.poll() is None:
            experiment = client.get_experiment_by_name("mpo2_experiment") if (tmp_path / "mlflow.db").exists() else None
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and runs[0].data.metrics:  # it records its epochs
                break
            time.sleep(0.2)
        assert killed.poll() is None, killed.communicate()[1]
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=60)
    (abandoned,) = client.search_runs([experiment.experiment_id])
    assert abandoned.info.status == "RUNNING"
    again = launch(tmp_path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    ended, new = runs.pop(abandoned.info.run_id), next(iter(runs.values()))
    assert ended.info.status == "FAILED" and ended.info.end_time >= abandoned.info.start_time
    assert ended.data.tags["summary/success"] == "false"
    assert ended.data.tags["summary/error"].startswith(f"its process ({killed.pid} on ")
    assert new.info.status == "FINISHED"


def test_a_tracking_uri_of_no_known_store_is_one_line_before_training(tmp_path):
    """Failed on main: every run was recorded nowhere, and the launch exited 0."""
    refused = launch(tmp_path, MLFLOW_TRACKING_URI="garbage://")
    out, err = refused.communicate(timeout=600)
    assert refused.returncode == 2 and err.count("\n") <= 1 and "Traceback" not in err, err
    assert err.startswith("run_mpo2.sh: error: MLFLOW_TRACKING_URI='garbage://' cannot be opened (")
    assert "unsupported URI 'garbage://'" in err and out == "" and list(tmp_path.iterdir()) == []
