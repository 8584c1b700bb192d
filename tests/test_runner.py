"""The one runner (`experiments.runner`) through run_*.sh, whose seeds after the first train side by side in
forked workers (WORKERS) while its own process records them: the records, the results file and the figures
are those of the seeds trained one after another; a worker that dies, and a signal, leave every run recorded
as what happened to it; a study stops runs as pruned at their next epoch boundary. In this process
(`train_here`)."""

import json
import multiprocessing
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from ntn_tracker_file import load

import experiments.workers
from experiments.runner import Task
from experiments.workers import PARALLEL_FROM_S, worker_count

REPO = pathlib.Path(__file__).resolve().parents[1]
SEEDS = "3,0,2,1"  # in the results file in this order, whichever worker ends first


def _records(directory, seeds):
    runs = {s: load(directory / "experiment_logs" / f"mpo2_experiment_seed{s}.json") for s in seeds}
    results = json.loads((directory / "results_mpo2_experiment.json").read_text())
    return runs, results


def test_seeds_side_by_side_are_recorded_as_one_after_another(train_here, tmp_path, monkeypatch):
    (tmp_path / "serial").mkdir()
    (tmp_path / "side").mkdir()
    monkeypatch.chdir(tmp_path / "serial")
    assert train_here("mpo2", SEEDS=SEEDS, WORKERS="1", SAVE_MODEL="true")[0] == 0
    serial, serial_results = _records(tmp_path / "serial", [3, 0, 2, 1])
    monkeypatch.chdir(tmp_path / "side")
    code, out, err = train_here("mpo2", SEEDS=SEEDS, WORKERS="2", SAVE_MODEL="true")
    assert code == 0 and "4/4 seeds succeeded" in out, err
    side, side_results = _records(tmp_path / "side", [3, 0, 2, 1])
    assert [r["seed"] for r in side_results["results"]] == [3, 0, 2, 1]
    for key in ("n_total", "n_success", "test_loss_mean", "test_r2_mean", "test_r2_std"):
        assert side_results[key] == pytest.approx(serial_results[key], rel=1e-12), key
    for a, b in zip(serial_results["results"], side_results["results"], strict=True):
        assert a.keys() == b.keys() and a["status"] == b["status"] == "finished"
        assert all(a[k] == pytest.approx(b[k], rel=1e-12) for k in a if k != "status")
    for seed, run in side.items():
        before = serial[seed]
        assert run["hparams"] == before["hparams"] and run["summary"]["status"] == "finished"
        assert [m["step"] for m in run["metrics_log"]] == [m["step"] for m in before["metrics_log"]]
        for m, n in zip(run["metrics_log"], before["metrics_log"], strict=True):
            assert {k: v for k, v in m.items() if k != "timestamp"} == pytest.approx(
                {k: v for k, v in n.items() if k != "timestamp"}, rel=1e-12
            )
        files = sorted(p.name for p in (tmp_path / "side" / "experiment_logs" / ".artifacts").glob(f"*seed{seed}*/*"))
        assert f"model_seed{seed}.pt" in files and "results_mpo2_experiment.json" in files, files
    assert multiprocessing.active_children() == []


def test_a_slow_first_epoch_is_said_once_with_how_long_its_run_takes(train_here, monkeypatch):
    """#40 finding 11: BOND_DIM=32 L=4 trained 10 minutes with no word that it would."""
    import experiments.runner

    monkeypatch.setattr(experiments.runner, "SLOW_EPOCH_S", 0.0)  # every first epoch is slow
    code, _, err = train_here("mpo2", SEEDS="0,1", N_EPOCHS="3", WORKERS="1")
    said = [line for line in err.splitlines() if "first epoch took" in line]
    assert code == 0 and len(said) == 1, err
    assert re.fullmatch(r"mpo2_experiment_seed0: its first epoch took \d+ s; its 3 epochs take about \d+ s", said[0])
    monkeypatch.setattr(experiments.runner, "SLOW_EPOCH_S", 3600.0)  # a first epoch within it: no word
    assert "first epoch took" not in train_here("mpo2", SEEDS="0", N_EPOCHS="2")[2]


def test_a_worker_that_dies_fails_its_run_and_is_replaced(train_here, tmp_path, monkeypatch):
    real = experiments.workers.trained_seed

    def dies_on_seed_2(model, s, data, seed, run):
        if seed == 2:
            os._exit(7)  # in the worker, as a crash or the OOM killer would end it
        return real(model, s, data, seed, run)

    monkeypatch.setattr(experiments.workers, "trained_seed", dies_on_seed_2)
    code, _, err = train_here("mpo2", SEEDS="0,1,2,3,4", WORKERS="2")
    assert code == 1, err
    runs, results = _records(tmp_path, [0, 1, 2, 3, 4])
    by_seed = {r["seed"]: r for r in results["results"]}
    assert [r["seed"] for r in results["results"]] == [0, 1, 2, 3, 4]
    # the worker training seed 2 died; another took its place and trained the seeds left
    assert [s for s, r in by_seed.items() if r["success"]] == [0, 1, 3, 4]
    assert by_seed[2]["error"] == "the worker process training it ended with exit code 7"
    assert runs[2]["summary"]["status"] == "failed" and runs[2]["summary"]["error"] == by_seed[2]["error"]
    assert all(runs[s]["summary"]["status"] == "finished" for s in (0, 1, 3, 4))
    assert multiprocessing.active_children() == []


def test_a_signal_while_seeds_train_side_by_side_ends_each_run_as_interrupted(train_here, tmp_path, monkeypatch):
    real = experiments.workers.trained_seed

    def endless_after_seed_0(model, s, data, seed, run):
        if seed == 0:
            return real(model, s, data, seed, run)
        run.log_hparams({"seed": seed})
        for epoch in range(10**6):
            run.callback_epoch(epoch, {"loss": 1.0}, {})
            time.sleep(0.02)

    def terminate_once_both_train():
        files = [tmp_path / "experiment_logs" / f"mpo2_experiment_seed{s}.json" for s in (1, 2)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(f.exists() and len(load(f)["metrics_log"]) > 2 for f in files):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(experiments.workers, "trained_seed", endless_after_seed_0)
    threading.Thread(target=terminate_once_both_train, daemon=True).start()
    code, _, err = train_here("mpo2", SEEDS="0,1,2", WORKERS="2")
    assert code == 143 and err.count("\n") == 1, err
    assert "runs mpo2_experiment_seed1, mpo2_experiment_seed2 recorded as interrupted" in err, err
    assert "the 1 seeds before them in results_mpo2_experiment.json" in err, err
    runs, results = _records(tmp_path, [0, 1, 2])
    assert [r["seed"] for r in results["results"]] == [0]
    assert runs[0]["summary"]["status"] == "finished"
    for seed in (1, 2):
        assert runs[seed]["summary"]["status"] == "interrupted"
        assert runs[seed]["summary"]["error"] == "interrupted by SIGTERM"
    assert multiprocessing.active_children() == []  # the workers were stopped


def test_auto_trains_side_by_side_only_when_it_pays_and_workers_refuse_more_torch_threads(train_here):
    cores = len(os.sched_getaffinity(0))
    assert worker_count(0, 4, PARALLEL_FROM_S / 5) == 1  # 4 seeds of this cost take under PARALLEL_FROM_S
    assert worker_count(0, 4, PARALLEL_FROM_S) == min(cores, 4)
    assert worker_count(3, 2, 0.0) == 2 and worker_count(1, 4, 10.0) == 1
    assert worker_count(0, 4, 10.0, helpers=1) == max(1, min(cores - 1, 4))  # aim's uploader keeps a core
    code, _, err = train_here("mpo2", WORKERS="2", TORCH_THREADS="2")
    assert code == 2 and err.count("\n") == 1, err
    assert "WORKERS=2 trains each seed at one torch thread, but TORCH_THREADS=2 asks for more" in err
    code, _, err = train_here("mpo2", WORKERS="some")
    assert code == 2 and "WORKERS='some' must be auto (0) or an integer >= 1" in err, err


@pytest.mark.parametrize("env", [{"WORKERS": "100000"}, {"TORCH_THREADS": "100000"}, {"TORCH_THREADS": "CORES+1"}])
def test_workers_or_torch_threads_above_the_cores_are_refused_in_one_line(train_here, tmp_path, env):
    """Failed on main: TORCH_THREADS=1000 was taken (36x slower), WORKERS=1000 forked a process per seed."""
    cores = len(os.sched_getaffinity(0))
    env = {k: v.replace("CORES+1", str(cores + 1)) for k, v in env.items()}
    code, out, err = train_here("mpo2", **env)
    ((name, value),) = env.items()
    assert code == 2 and err.count("\n") == 1 and out == "", err
    assert f"{name}={value} is more than the {cores} cores this process may use; give at most {cores}" in err
    assert list(tmp_path.iterdir()) == []


ENDLESS = """
import sys, time
import experiments.train as train
import experiments.workers as workers
real = workers.trained_seed
def endless_after_seed_0(model, s, data, seed, run):
    if seed == 0:
        return real(model, s, data, seed, run)
    while True:
        run.callback_epoch(0, {"loss": 1.0}, {})
        time.sleep(0.02)
workers.trained_seed = endless_after_seed_0
sys.exit(train.main(["mpo2"]))
"""


def _children(pid):
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_end_when_the_script_s_process_is_killed(tmp_path):
    """Failed before: each worker held its own pipe's read end (inherited at the fork), so its sends never
    failed: killed with SIGKILL, the script left its workers training (and blocked) for good."""
    (tmp_path / "endless.py").write_text(ENDLESS)
    env = {k: v for k, v in os.environ.items() if k not in ("TRACKER_BACKEND", "EXPERIMENT_NAME", "WORKERS")}
    env |= {"PYTHONPATH": str(REPO), "DATASET": "synthetic", "N_SAMPLES": "300", "SEEDS": "0,1,2", "WORKERS": "2"}
    script = subprocess.Popen([sys.executable, "endless.py"], cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    files = [tmp_path / "experiment_logs" / f"mpo2_experiment_seed{s}.json" for s in (1, 2)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(f.exists() and load(f)["metrics_log"] for f in files):
        time.sleep(0.05)
    workers = _children(script.pid)
    assert len(workers) == 2, workers
    script.kill()
    script.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(pathlib.Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.05)
    left = [pid for pid in workers if pathlib.Path(f"/proc/{pid}").exists()]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []


PRUNED_SWEEP = """
name = "pruning"
model = "mpo2"
seeds = [0, 1]
[settings]
dataset = "synthetic"
n_samples = 200
n_epochs = {epochs}
[grid]
bond_dim = [2]
"""


class PruneSeed1:
    """A study through the runner's seam: both seeds of one configuration; seed 1 pruned after epoch 1."""

    def __init__(self, configuration):
        self.tasks = [Task(configuration, seed, f"pruning_bond_dim2_seed{seed}@test") for seed in (0, 1)]
        self.epochs, self.entries = {0: [], 1: []}, {}

    def next_tasks(self, free):
        tasks, self.tasks = self.tasks[:free], self.tasks[free:]
        return tasks

    def on_epoch(self, task, epoch, scores):
        self.epochs[task.seed].append((epoch, scores["val_r2"]))
        return [task] if task.seed == 1 and epoch == 1 else []

    def on_entry(self, task, entry):
        return None

    def on_end(self, task, entry):
        self.entries[task.seed] = entry


class SignalledMidWrite(PruneSeed1):
    """A study whose storage write (`journal`, a line at a time, as Optuna's) is cut halfway by a signal, in
    `next_tasks` or in `on_epoch`."""

    def __init__(self, configuration, journal, when):
        super().__init__(configuration)
        self.journal, self.when = journal, when

    def _write(self, what):
        with open(self.journal, "a", encoding="utf-8") as journal:
            journal.write(f"{what} begins")
            journal.flush()
            os.kill(os.getpid(), signal.SIGINT)
            journal.write(" and ends\n")

    def next_tasks(self, free):
        if self.when == "next_tasks" and self.tasks:
            self._write("asked")
        return super().next_tasks(free)

    def on_epoch(self, task, epoch, scores):
        if self.when == "on_epoch":
            self._write(f"epoch {epoch}")
        return super().on_epoch(task, epoch, scores)


@pytest.mark.parametrize("when", ["next_tasks", "on_epoch"])
def test_a_signal_never_cuts_a_study_s_storage_write_in_half(tmp_path, monkeypatch, when):
    """Failed before: a Ctrl-C during Optuna's journal write (asking a trial, reporting an epoch) left a line
    cut short, which the next launch refuses (and Optuna would append to, breaking the study for good)."""
    from ntn.tracking import stop_on_signals, validate

    from experiments.runner import Progress, Runner
    from experiments.seed_run import command_of_this_process
    from experiments.sweepfile import load as load_sweep
    from experiments.workers import InlinePool

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pruning.toml").write_text(PRUNED_SWEEP.format(epochs=3))
    (configuration,) = load_sweep(tmp_path / "pruning.toml", tracker_backend="file").configurations
    study = SignalledMidWrite(configuration, tmp_path / "journal", when)
    runner = Runner(study, validate("file"), command_of_this_process(), Progress(0, shown=False), ("output_file",))
    previous = stop_on_signals()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run(InlinePool())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    written = (tmp_path / "journal").read_text(encoding="utf-8")
    assert written == ("asked" if when == "next_tasks" else "epoch 0") + " begins and ends\n"


@pytest.mark.parametrize("where", ["inline", "forked", "spawned", "dask"])  # spawned: how a GPU's workers start
def test_a_study_prunes_a_run_at_its_next_epoch_boundary_and_it_is_recorded_pruned(tmp_path, monkeypatch, where):
    from ntn.tracking import validate

    from experiments.dask_pool import DaskPool
    from experiments.runner import Progress, Runner
    from experiments.seed_run import command_of_this_process
    from experiments.sweepfile import load as load_sweep
    from experiments.workers import InlinePool, LocalPool

    monkeypatch.chdir(tmp_path)
    epochs = 3 if where == "inline" else 400  # far more than a stop takes to reach a worker, however loaded
    (tmp_path / "pruning.toml").write_text(PRUNED_SWEEP.format(epochs=epochs))
    (configuration,) = load_sweep(tmp_path / "pruning.toml", tracker_backend="file").configurations
    study = PruneSeed1(configuration)
    runner = Runner(study, validate("file"), command_of_this_process(), Progress(0, shown=False), ("output_file",))
    pools = {"inline": InlinePool, "forked": lambda: LocalPool(2), "spawned": lambda: LocalPool(2, fork=False)}
    pool = (pools | {"dask": lambda: DaskPool(2, None)})[where]()
    try:
        runner.run(pool)
    finally:
        pool.close()
    pruned, full = study.entries[1], study.entries[0]
    assert pruned["status"] == "pruned" and pruned["success"] is False and pruned["test_r2"] is None
    assert full["status"] == ("finished" if full["success"] else "failed") and full["test_r2"] is not None
    stopped = pruned["pruned_at_epoch"]
    assert stopped == 1 if where == "inline" else 1 <= stopped < epochs - 1  # stopped where it looked next
    runs = {s: load(tmp_path / "experiment_logs" / f"pruning_bond_dim2_seed{s}.json") for s in (0, 1)}
    assert runs[1]["summary"]["status"] == "pruned" and runs[1]["summary"]["pruned_at_epoch"] == stopped
    assert [m["step"] for m in runs[1]["metrics_log"]] == list(range(-1, stopped + 1))
    assert [e for e, _ in study.epochs[1]] == list(range(stopped + 1))  # the study saw each epoch recorded
    assert [m["val_r2"] for m in runs[1]["metrics_log"][1:]] == [r2 for _, r2 in study.epochs[1]]
    assert [m["step"] for m in runs[0]["metrics_log"]] == list(range(-1, epochs))
    assert runs[0]["summary"]["test_r2"] == full["test_r2"]
