"""The example plugin, installed from its folder, is found by name and used end to end."""

import json
import os
import pathlib
import subprocess
import sys

from ntn.tracking.testing import END_TIME, run_conformance
from ntn_tracker_jsonl import JsonlTracker

REPO = pathlib.Path(__file__).resolve().parents[3]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_passes_the_conformance_kit(tmp_path, monkeypatch):
    monkeypatch.setenv("JSONL_DIR", str(tmp_path))
    run = run_conformance(JsonlTracker, experiment_name="conformance")
    events = read(tmp_path / "conformance.jsonl")
    assert [e["event"] for e in events] == ["config", "hparams"] + ["metrics"] * 4 + ["summary", "finalize"]
    assert [e["step"] for e in events if e["event"] == "metrics"] == [s for s, _ in run.metrics]
    assert events[-1] == {"event": "finalize", "status": "failed", "end_time": END_TIME}


def test_listed_by_ntn_trackers():
    console_script = pathlib.Path(sys.executable).parent / "ntn-trackers"  # installed with ntn
    out = subprocess.run([str(console_script), "list"], capture_output=True, text=True, check=True).stdout
    row = next(line for line in out.splitlines() if line.startswith("jsonl"))
    assert "ntn-tracker-jsonl" in row and "ntn_tracker_jsonl:JsonlTracker" in row and row.rstrip().endswith("yes")


def test_tracker_backend_selects_it_in_the_experiment_script(tmp_path):
    env = dict(
        os.environ,
        TRACKER_BACKEND="jsonl",
        JSONL_DIR=str(tmp_path / "jsonl"),
        PYTHON=sys.executable,
        DATASET="synthetic",
        N_SAMPLES="200",
        SEEDS="0,1",
        N_EPOCHS="2",
    )
    subprocess.run(["bash", str(REPO / "experiments" / "run_mpo2.sh")], cwd=tmp_path, env=env, check=True)
    for seed in (0, 1):
        events = read(tmp_path / "jsonl" / f"mpo2_experiment_seed{seed}.jsonl")
        assert events[0]["event"] == "config" and events[0]["config"]["bond_dim"] == 6
        assert [e["step"] for e in events if e["event"] == "metrics"] == [-1, 0, 1]
        summary = next(e["summary"] for e in events if e["event"] == "summary")
        assert summary["seed"] == seed and "test_r2" in summary
        assert events[-1]["event"] == "finalize"
