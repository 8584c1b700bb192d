"""What a script run writes is never lost or overwritten, and every record says the same, however the run
ends: files that are not what they seem, full disks, failing trackers, signals at every step of a seed's
end. In this process (`train_here`): run_*.sh's entry point, no torch import per case."""

import errno
import json
import os
import re
import signal
import stat

import pytest
from ntn_tracker_file import load

from experiments.settings import settings_of


def test_results_file_names_are_as_unique_as_run_file_names():
    """Failed on main: `bond 4` and `bond:4` shared results_bond_4.json; the second overwrote the first."""
    names = ["bond 4", "bond:4", "bond_4", "bönd 4", "../bond_4"]
    files = [settings_of("mpo2", {"experiment_name": ("EXPERIMENT_NAME", n)}).output_file for n in names]
    assert len(set(files)) == len(names) and files[2] == "results_bond_4.json"
    assert all(f.startswith("results_") and f.endswith(".json") and "/" not in f for f in files)


def _device_node(path):
    """A character device like /dev/null, made in the scratch directory (never the machine's /dev); a FIFO
    where making device nodes is not allowed."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        os.mkfifo(path)


@pytest.mark.parametrize("kind", ["symlink", "device", "run file", "another experiment", "a sweep"])
def test_output_file_that_is_not_this_experiment_s_results_is_refused_untouched(train_here, tmp_path, kind):
    """Failed on main: OUTPUT_FILE through a symlink overwrote its target, a device node was replaced by a
    JSON file (as root), and a run file or another experiment's results were replaced."""
    precious = tmp_path / "precious.json"
    precious.write_text('{"keep": true}')
    target, env = tmp_path / "out.json", {}
    if kind == "symlink":
        target.symlink_to(precious)
    elif kind == "device":
        _device_node(target)
    elif kind == "run file":
        (tmp_path / "logs").mkdir()
        target = tmp_path / "logs" / "mpo2_experiment_seed0.json"
        env = {"TRACKER_DIR": "logs"}
    elif kind == "another experiment":
        target.write_text(json.dumps({"results": [], "config": {"experiment": "other"}}))
    else:
        target.write_text(json.dumps({"sweep": "grid", "configurations": []}))
    before = {p.name: (p.lstat().st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else b"") for p in
              tmp_path.rglob("*")}  # fmt: skip
    code, _, err = train_here("mpo2", OUTPUT_FILE=str(target), **env)
    assert code == 2 and err.count("\n") == 1 and "OUTPUT_FILE=" in err, err
    after = {p.name: (p.lstat().st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else b"") for p in
             tmp_path.rglob("*")}  # fmt: skip
    assert after == before and precious.read_text() == '{"keep": true}'


def test_a_rerun_replaces_its_own_results_file(train_here, tmp_path):
    for _ in range(2):
        code, _, err = train_here("mpo2", N_EPOCHS="1", SEEDS="0", JITTER_START="0.001")
        assert code in (0, 1), err
    assert json.loads((tmp_path / "results_mpo2_experiment.json").read_text())["n_total"] == 1


def test_a_full_disk_between_seeds_is_one_line_and_keeps_what_was_recorded(train_here, tmp_path, monkeypatch):
    """Failed on main: a traceback; now one line, exit 2, seed 0's results and run file intact."""
    import experiments.train

    write_json, calls = experiments.train.write_json, []

    def fills_up(path, document):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_json(path, document)

    monkeypatch.setattr(experiments.train, "write_json", fills_up)
    code, _, err = train_here("mpo2", N_EPOCHS="2", SEEDS="0,1,2", WORKERS="1")  # auto: side by side when loaded
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "No space left on device" in err and "the 1 seeds before seed 1 are recorded in" in err
    results = json.loads((tmp_path / "results_mpo2_experiment.json").read_text())
    assert [r["seed"] for r in results["results"]] == [0]
    assert load(tmp_path / "experiment_logs" / "mpo2_experiment_seed0.json")["summary"]["status"] == "finished"
    seed1 = load(tmp_path / "experiment_logs" / "mpo2_experiment_seed1.json")["summary"]
    assert seed1["status"] == "failed" and "test_r2" in seed1  # trained, but its results entry was not written
    assert not (tmp_path / "experiment_logs" / "mpo2_experiment_seed2.json").exists()


def test_a_tracker_disabled_mid_run_makes_the_seed_failed_everywhere(train_here, tmp_path, monkeypatch):
    """Failed on main: the file tracker, disabled by a full TRACKER_DIR in log_metrics, still wrote
    "finished" into a file missing epochs, and the results file counted the seed a success."""
    import ntn_tracker_file.tracker

    write_atomic, writes = ntn_tracker_file.tracker.write_atomic, []

    def fills_up(path, data, dir_fd=None):
        if path == "mpo2_experiment_seed0.json":  # the run file (in TRACKER_DIR's descriptor), not the files attached
            writes.append(path)
            if len(writes) == 5:  # the first document, provenance, hparams, step -1, then epoch 0: full
                raise OSError(errno.ENOSPC, "No space left on device")
        write_atomic(path, data, dir_fd)

    monkeypatch.setattr(ntn_tracker_file.tracker, "write_atomic", fills_up)
    code, _, err = train_here("mpo2", N_EPOCHS="3", SEEDS="0", JITTER_START="0.001")
    assert code == 1, err
    entry = json.loads((tmp_path / "results_mpo2_experiment.json").read_text())["results"][0]
    assert entry["success"] is False and "tracker 'file' failed in log_metrics: OSError" in entry["error"]
    run = load(tmp_path / "experiment_logs" / "mpo2_experiment_seed0.json")
    assert run["summary"]["status"] == "failed"  # with what it held: it missed the epochs after the failure
    assert [m["step"] for m in run["metrics_log"]] == [-1, 0]


def test_a_collapsed_seed_exits_1(train_here, tmp_path):
    """Failed on main: a seed recorded as failed (collapsed to a constant) left the script's exit code 0."""
    code, out, err = train_here("mpo2", N_EPOCHS="2", SEEDS="0", JITTER_START="1e8")
    entry = json.loads((tmp_path / "results_mpo2_experiment.json").read_text())["results"][0]
    assert entry["error"].startswith("collapsed") and f'1 failed in training (seed 0: "{entry["error"]}")' in out
    assert code == 1, err


STEPS = ["log_summary", "results file", "log_artifact", "finalize", "after finalize"]
INTERRUPTED = re.compile(r"runs? (\S+, )*mpo2_experiment_seed1(, \S+)* recorded as interrupted")


@pytest.mark.parametrize("workers", ["1", "2"])  # seeds 1 and 2 one after another, or side by side
@pytest.mark.parametrize("step", STEPS)
def test_a_signal_at_any_step_of_a_seed_s_end_leaves_results_and_runs_agreeing(
    train_here, tmp_path, monkeypatch, step, workers
):
    """Failed on main: a SIGTERM between a seed's results entry and its run's end left the results file
    counting a success that the run file called interrupted. WORKERS is given: with auto, a loaded machine
    trained seeds 1 and 2 side by side (seed 0 took longer), which the test took for one after another."""
    import ntn_tracker_file
    import ntn_tracker_file.tracker

    import experiments.train

    def signal_in_seed1(tracker):
        if tracker is None or tracker.experiment_name == "mpo2_experiment_seed1":
            os.kill(os.getpid(), signal.SIGTERM)

    file_tracker = ntn_tracker_file.tracker.FileTracker
    log_summary, log_artifact, finalize = file_tracker.log_summary, file_tracker.log_artifact, file_tracker.finalize
    write_json = experiments.train.write_json

    class Signalling(file_tracker):
        def log_summary(self, summary):
            if step == "log_summary" and "test_loss" in summary:
                signal_in_seed1(self)
            log_summary(self, summary)

        def log_artifact(self, path, name):
            if step == "log_artifact":
                signal_in_seed1(self)
            log_artifact(self, path, name)

        def finalize(self, status):
            if step == "finalize":
                signal_in_seed1(self)
            finalize(self, status)
            if step == "after finalize":
                signal_in_seed1(self)

    def results_then_signal(path, document):
        if step == "results file" and 1 in [r["seed"] for r in document["results"]]:  # seed 2's may be there
            signal_in_seed1(None)
        write_json(path, document)

    monkeypatch.setattr(ntn_tracker_file, "FileTracker", Signalling)
    monkeypatch.setattr(experiments.train, "write_json", results_then_signal)
    code, _, err = train_here("mpo2", N_EPOCHS="2", SEEDS="0,1,2", JITTER_START="0.001", WORKERS=workers)
    assert code == 143 and err.count("\n") == 1 and err.startswith("interrupted by SIGTERM"), err
    results = json.loads((tmp_path / "results_mpo2_experiment.json").read_text())["results"]
    in_results = {r["seed"]: r for r in results}
    for seed in (0, 1, 2):
        path = tmp_path / "experiment_logs" / f"mpo2_experiment_seed{seed}.json"
        if seed == 2 and not path.exists():  # not started yet: always so one after another
            continue
        summary = load(path)["summary"]
        if seed in in_results:  # recorded in the results: the run ended as the entry says
            assert summary["status"] == ("finished" if in_results[seed]["success"] else "failed"), (step, summary)
            assert summary["success"] == in_results[seed]["success"]
        else:
            assert summary["status"] == "interrupted", (step, seed, summary)
    assert 0 in in_results and (workers == "2" or 2 not in in_results)
    assert workers == "2" or not (tmp_path / "experiment_logs" / "mpo2_experiment_seed2.json").exists()
    if 1 in in_results:
        assert "run mpo2_experiment_seed1 finished and recorded" in err, err
    else:
        assert INTERRUPTED.search(err), err


@pytest.mark.parametrize("env", [{"TRACKER_BACKEND": "bogus"}, {"OUTPUT_FILE": "no/such/dir/r.json"}])
def test_a_bad_backend_or_output_file_is_refused_before_torch_is_imported(tmp_path, env):
    """Failed on main: these one-line errors waited for torch's import (seconds) first."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys; from experiments.train import main; rc = main(['mpo2']); print(rc, 'torch' in sys.modules)"
    environ = {k: v for k, v in os.environ.items() if k not in ("TRACKER_BACKEND", "OUTPUT_FILE")}
    environ |= {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "DATASET": "synthetic"} | env
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environ, capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
