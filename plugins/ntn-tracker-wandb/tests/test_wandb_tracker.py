"""ntn-tracker-wandb, offline, read back from W&B's own transaction logs (`run-<id>.wandb`)."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ntn.files import file_stem
from ntn.tracking import installed
from ntn.tracking.readers import read_runs
from ntn.tracking.testing import check_config_error, check_reader, run_conformance
from ntn_tracker_wandb import WandbTracker, secret_values
from ntn_tracker_wandb.reading import BLOCK, records
from ntn_tracker_wandb.tracker import EXIT_TIMEOUT_ENV, WandbRun

REPO = Path(__file__).resolve().parents[3]
API_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B key; never sent anywhere (offline)
SETTINGS_OF_TESTS = ("TRACKER_BACKEND", "EXPERIMENT_NAME", "WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT")


@pytest.fixture(autouse=True)
def in_tmp(monkeypatch, tmp_path):
    for name in SETTINGS_OF_TESTS:
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):  # W&B writes nothing outside tmp_path
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.chdir(tmp_path)


def _runs(source: Path) -> dict[str, dict]:
    found, problems = read_runs("wandb", str(source))
    assert problems == []
    return {r["experiment_name"]: r for r in found}


def test_entry_points_are_installed():
    assert installed()["wandb"].value == "ntn_tracker_wandb:WandbTracker"


def test_passes_the_conformance_kit_and_wandbs_log_holds_what_it_was_sent(tmp_path):
    sent = run_conformance(WandbTracker)
    record = check_reader("wandb", str(tmp_path), sent)
    assert record["config"] == json.loads(json.dumps(sent.config)) and record["provenance"] == sent.provenance
    assert record["wandb"]["group"] == "conformance_ünïcødé λ/run 1"  # the experiment: the name less _seed0
    assert record["wandb"]["exit_code"] == 1 and record["wandb"]["tags"] == ["failed"]
    assert [m["step"] for m in record["metrics_log"]] == [-1, 0, 1, 2]  # -1: the summary's initial/*, not a step
    (path,) = [
        Path(r["wandb"]["path"]) for r in _runs(tmp_path).values() if r["experiment_name"] == sent.experiment_name
    ]
    steps = [r.history.step.num for r in records(path) if r.WhichOneof("record_type") == "history"]
    assert steps == [0, 1, 2]  # W&B's own history starts at 0
    name, content = sent.artifact
    assert (path.parent / "files" / "artifacts" / file_stem(name)).read_bytes() == content
    check_config_error("wandb", {"WANDB_MODE": "sometimes"}, "WANDB_MODE")
    (tmp_path / "file").write_text("not a directory")
    check_config_error("wandb", {"WANDB_DIR": str(tmp_path / "file" / "runs")}, "WANDB_DIR")


def test_two_runs_interleaved_in_one_process_stay_apart(tmp_path):
    """Failed with W&B's default reinit: the second wandb.init returned the first run, still active. The W&B
    runs are driven here as WandbTracker's thread drives them, without threads, so the order is certain."""
    first = WandbRun("inter_seed0", {"experiment": "inter", "sweep": "study"}, timeout=30)
    second = WandbRun("inter_seed1", {"experiment": "inter", "sweep": "study"}, timeout=30)
    for step in range(3):
        first.log_metrics({"loss": 1.0 + step}, step)
        second.log_metrics({"loss": 10.0 + step}, step)
    first.log_summary({"seed": 0, "success": True})
    first.finalize("finished", None)
    second.log_metrics({"loss": 13.0}, 3)  # after the first run ended
    second.log_summary({"seed": 1, "success": False, "error": "KeyboardInterrupt"})
    second.finalize("interrupted", None)
    runs = _runs(tmp_path)
    assert [m["loss"] for m in runs["inter_seed0"]["metrics_log"]] == [1.0, 2.0, 3.0]
    assert [m["loss"] for m in runs["inter_seed1"]["metrics_log"]] == [10.0, 11.0, 12.0, 13.0]
    assert runs["inter_seed0"]["summary"] == {"seed": 0, "success": True, "status": "finished"}
    assert runs["inter_seed1"]["summary"]["status"] == "interrupted"
    assert runs["inter_seed0"]["wandb"]["exit_code"] == 0 and runs["inter_seed1"]["wandb"]["exit_code"] == 130
    assert runs["inter_seed0"]["wandb"]["run_id"] != runs["inter_seed1"]["wandb"]["run_id"]
    assert runs["inter_seed0"]["wandb"]["group"] == runs["inter_seed1"]["wandb"]["group"] == "study"  # the sweep


def test_a_log_of_many_blocks_reads_back_whole(tmp_path):
    """The reader's framing: records across W&B's 32 KiB blocks, one of them in pieces (a long error text)."""
    run = WandbRun("long_seed0", {"experiment": "long"}, timeout=30)
    for step in range(1500):
        run.log_metrics({"loss": 1.0 / (step + 1), "r2": step * 1e-3}, step)
    run.log_summary({"seed": 0, "success": False, "error": "x" * 70_000})
    run.finalize("failed", None)
    (record,) = _runs(tmp_path).values()
    assert Path(record["wandb"]["path"]).stat().st_size > 4 * BLOCK
    assert [m["step"] for m in record["metrics_log"]] == list(range(1500))
    assert all(m["loss"] == 1.0 / (m["step"] + 1) and m["r2"] == m["step"] * 1e-3 for m in record["metrics_log"])
    assert record["summary"]["error"] == "x" * 70_000


def test_a_run_trained_again_with_its_run_id_reads_back_as_its_last_attempt_only(tmp_path):
    for run_id, loss in (("again_seed0@a", 1.0), ("again_seed0@a", 2.0), ("again_seed0@b", 3.0)):
        run = WandbRun("again_seed0", {"experiment": "again", "run_id": run_id}, timeout=30)
        run.log_metrics({"loss": loss}, 0)
        run.finalize("finished", None)
    found, problems = read_runs("wandb", str(tmp_path))
    assert problems == [] and sorted(r["metrics_log"][0]["loss"] for r in found) == [2.0, 3.0]


KEYED_RUN = """
import sys
from ntn.tracking import start_run
key = sys.argv[-1]  # on the command line too, which W&B records unless its metadata is off
with start_run("key_seed0", {"api_key": key, "url": f"https://user:{key}@host"}, backend="wandb") as run:
    run.log_hparams({"note": f"key {key}"})
    run.log_summary({"seed": 0, "success": True, "error": f"401: {key} refused"})
"""


def test_offline_by_default_and_the_api_key_is_written_nowhere(tmp_path, monkeypatch):
    """Failed before W&B's metadata was turned off: the command line was in the run's .wandb log."""
    assert WandbTracker.where().startswith("wandb: offline runs in wandb")
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    assert WandbTracker.where().startswith("wandb: online")  # a key: online, unless WANDB_MODE says otherwise
    assert list(secret_values({"WANDB_API_KEY": API_KEY})) == [API_KEY]  # declared, whatever the core's name rule
    environ = {k: v for k, v in os.environ.items() if k != "TRACKER_BACKEND"} | {"WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-c", KEYED_RUN, "--token", API_KEY], cwd=tmp_path, env=environ)
    assert done.returncode == 0
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))  # offline: WANDB_MODE respected
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or API_KEY.encode() not in path.read_bytes(), path


DEAD_SERVER_RUN = """
from ntn.tracking import start_run
with start_run("dead_seed0", {"experiment": "dead"}, backend="wandb") as run:
    run.log_metrics({"loss": 1.0}, step=0)
    run.log_summary({"seed": 0, "success": True})
print("trained")
"""


def test_a_server_that_does_not_answer_holds_the_process_at_most_the_exit_bound(tmp_path):
    """Failed before W&B's init_timeout was bounded: the process took 91 s to exit (W&B's 90 s default)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once the socket is closed
    environ = {k: v for k, v in os.environ.items() if k not in SETTINGS_OF_TESTS}
    environ |= {"WANDB_API_KEY": API_KEY, "WANDB_BASE_URL": f"http://127.0.0.1:{closed}", EXIT_TIMEOUT_ENV: "2"}
    done = subprocess.run(
        [sys.executable, "-c", DEAD_SERVER_RUN], cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == "trained\n", done.stderr
    assert "tracker 'wandb' failed" in done.stderr and "wandb.login" not in done.stderr  # no W&B login line


def _script(tmp_path: Path, *command: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in SETTINGS_OF_TESTS}
    environ |= {"PYTHON": sys.executable, "DATASET": "synthetic", "N_SAMPLES": "200", "N_EPOCHS": "3"}
    environ |= {"TRACKER_BACKEND": "file,wandb", "EXPERIMENT_NAME": "wb"} | env
    script, *args = command or ("run_mpo2.sh",)
    return subprocess.run(
        ["bash", str(REPO / "experiments" / script), *args], cwd=tmp_path, env=environ, capture_output=True, text=True
    )


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12)


def _equal_to_the_file_tracker(tmp_path: Path) -> dict[str, dict]:
    """The runs read back from W&B's files, each equal to the file backend's record of it; by name."""
    files, problems = read_runs("file", str(tmp_path / "experiment_logs"))
    runs = _runs(tmp_path)
    assert problems == [] and len(runs) == len(files)
    for document in files:
        record = runs[document["experiment_name"]]
        assert record["summary"] == document["summary"] and record["hparams"] == document["hparams"]
        assert record["provenance"] == document["provenance"] and record["config"] == document["config"]
        assert [m["step"] for m in record["metrics_log"]] == [m["step"] for m in document["metrics_log"]]
        for ours, theirs in zip(record["metrics_log"], document["metrics_log"], strict=True):
            numbers = {k for k, v in theirs.items() if isinstance(v, float)}
            assert numbers and numbers <= ours.keys() and all(_same(ours[k], theirs[k]) for k in numbers)
    return runs


def test_seeds_side_by_side_read_back_from_wandbs_files_equal_to_the_file_tracker(tmp_path):
    done = _script(tmp_path, SEEDS="0,1,2", WORKERS="2")  # seeds 1 and 2 interleaved in the script's process
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "wandb" not in done.stderr and [line for line in lines if "wandb" in line] == lines[-1:]  # no W&B banner
    assert "wandb: offline runs in wandb (to send: wandb sync wandb/offline-run-*)" in lines[-1]
    assert lines[-1].endswith("or ntn-trackers summary --from wandb")  # the reader of each backend
    runs = _equal_to_the_file_tracker(tmp_path)
    assert len(runs) == 3
    for record in runs.values():
        assert record["wandb"]["group"] == "wb" and record["wandb"]["exit_code"] == 0
        assert record["wandb"]["tags"] == ["finished"] and [m["step"] for m in record["metrics_log"]] == [-1, 0, 1, 2]
    summary = subprocess.run(
        [sys.executable, "-m", "ntn.tracking", "summary", "--from", f"wandb:{tmp_path}", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    (row,) = json.loads(summary.stdout)
    assert row["experiment"] == "wb" and row["runs"] == row["successful"] == 3


def test_a_failed_seed_is_a_failed_wandb_run(tmp_path):
    done = _script(tmp_path, SEEDS="0", N_EPOCHS="1", INIT_STRENGTH="1e200")  # overflows: the seed fails
    assert done.returncode == 1, done.stderr
    (run,) = _equal_to_the_file_tracker(tmp_path).values()  # NaN initial figures included
    assert math.isnan(run["metrics_log"][0]["loss"])
    assert run["wandb"]["exit_code"] == 1 and run["wandb"]["tags"] == ["failed"]
    assert run["summary"]["status"] == "failed" and run["summary"]["success"] is False and run["summary"]["error"]


SWEEP = """
name = "wbsweep"
model = "mpo2"
seeds = [0, 1]
[settings]
dataset = "synthetic"
n_samples = 200
n_epochs = 2
[grid]
bond_dim = [2, 3]
"""


def test_a_sweep_is_one_wandb_group(tmp_path):
    (tmp_path / "wbsweep.toml").write_text(SWEEP)
    done = _script(tmp_path, "run_sweep.sh", "wbsweep.toml", "--workers", "2", TRACKER_BACKEND="wandb")
    assert done.returncode == 0, done.stderr
    runs = _runs(tmp_path)
    assert sorted(runs) == sorted(f"wbsweep_bond_dim{b}_seed{s}" for b in (2, 3) for s in (0, 1))
    assert {r["wandb"]["group"] for r in runs.values()} == {"wbsweep"}  # the sweep's runs together in W&B
    assert {r["summary"]["status"] for r in runs.values()} == {"finished"}
    assert sorted(r["hparams"]["bond_dim"] for r in runs.values()) == [2, 2, 3, 3]


def test_a_pruned_run_exits_0_tagged_pruned_and_reads_back_pruned(tmp_path):
    run = WandbRun("trial_seed0", {"experiment": "trial", "sweep": "search"}, timeout=30)
    run.log_metrics({"loss": 1.0}, 0)
    run.log_summary({"seed": 0, "success": False})
    run.finalize("pruned", None)
    record = _runs(tmp_path)["trial_seed0"]
    assert record["summary"]["status"] == "pruned"
    assert record["wandb"]["exit_code"] == 0 and "pruned" in record["wandb"]["tags"]  # W&B: finished, not failed
