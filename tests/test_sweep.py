"""run_sweep.sh end to end: real worker processes, a real Dask LocalCluster, a real `dask scheduler` with
`dask worker`s on 127.0.0.1, real aim servers; results read back from the trackers' own records."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ntn.tracking.readers import read_runs

REPO = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).parent / "dask")

SWEEP = """
name = "grid"
model = "mpo2"
seeds = [0, 1]
[settings]
dataset = "synthetic"
n_samples = 200
n_epochs = {epochs}
[grid]
bond_dim = [2, 4]
l = [2, 3]
"""
NAMES = sorted(f"grid_bond_dim{b}_l{n}_seed{s}" for b in (2, 4) for n in (2, 3) for s in (0, 1))


def _aim_servers():
    """The aim plugin's test server (a real `aim server` process on 127.0.0.1), reused here."""
    spec = importlib.util.spec_from_file_location("aim_servers", REPO / "plugins/ntn-tracker-aim/tests/conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRACKER_BACKEND", "AIM_REPO", "TRACKER_DIR")}
    return env | {"PYTHON": sys.executable, "TRACKER_BACKEND": "both", "AIM_REPO": str(tmp_path / "aim")} | extra


def _write_sweep(tmp_path: Path, epochs: int = 3, text: str = SWEEP) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(text.format(epochs=epochs))
    return path


def sweep(tmp_path: Path, *args: str, background: bool = False, **env: str):
    command = ["bash", str(REPO / "experiments" / "run_sweep.sh"), *args]
    if background:
        return subprocess.Popen(
            command, cwd=tmp_path, env=_env(tmp_path, **env), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    return subprocess.run(command, cwd=tmp_path, env=_env(tmp_path, **env), capture_output=True, text=True, timeout=600)


def _results(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "results_sweep_grid.json").read_text())


def _exit_code(tmp_path: Path) -> int:
    """What the sweep must exit with: 1 while any recorded run failed (no better than the trivial
    predictor, at these tiny settings some may be), else 0."""
    results = _results(tmp_path)
    failed = sum(not r["success"] for c in results["configurations"] for r in c["runs"])
    assert failed == results["n_failed"]
    return 1 if failed else 0


def _file_runs(directory: Path) -> dict[str, dict]:
    records, problems = read_runs("file", str(directory))
    assert problems == []
    return {r["experiment_name"]: r for r in records}


def check_sweep(tmp_path: Path, aim_root: Path | None = None) -> None:
    """Every (configuration, seed) once in the results and once, finished, in each tracker, with the same
    figures; the statistics and the best configuration recomputed from the run files."""
    results = _results(tmp_path)
    assert results["n_runs"] == results["n_recorded"] == 8
    runs = _file_runs(tmp_path / "experiment_logs")
    assert sorted(runs) == NAMES
    for name, run in runs.items():  # trained to the end: finished, or failed as no better than trivial
        assert run["summary"]["status"] == ("finished" if run["summary"]["success"] else "failed")
        assert run["config"]["run_id"] == f"{name}@{results['sweep_id']}"
        assert run["config"]["sweep"] == "grid" and "output_file" not in run["config"]  # no file a sweep never writes
    val_means = {}
    for configuration in results["configurations"]:
        entries = {e["seed"]: e for e in configuration["runs"]}
        summaries = [runs[f"{configuration['experiment']}_seed{s}"]["summary"] for s in (0, 1)]
        assert configuration["n_total"] == 2 and configuration["n_success"] == sum(s["success"] for s in summaries)
        for seed, summary in zip((0, 1), summaries):
            assert entries[seed]["test_r2"] == summary["test_r2"] and entries[seed]["val_r2"] == summary["val_r2"]
        for key in ("test_r2", "val_r2", "test_loss"):
            values = [s[key] for s in summaries if s["success"]]
            assert configuration[f"{key}_mean"] == pytest.approx(np.mean(values), rel=1e-12, abs=1e-12)
            assert configuration[f"{key}_std"] == pytest.approx(np.std(values), rel=1e-9, abs=1e-12)
        if configuration["n_success"]:
            val_means[configuration["experiment"]] = np.mean([s["val_r2"] for s in summaries if s["success"]])
    assert results["best"]["experiment"] == max(val_means, key=val_means.get)
    if aim_root is not None:
        records, problems = read_runs("aim", str(aim_root))
        assert problems == []
        assert sorted(r["experiment_name"] for r in records) == NAMES  # no duplicate, no gap
        for record in records:
            assert record["summary"]["status"] == runs[record["experiment_name"]]["summary"]["status"]
            assert record["summary"]["test_r2"] == runs[record["experiment_name"]]["summary"]["test_r2"]
        from aim import Run
        from ntn_tracker_aim import index_runs

        for run in (Run(h, repo=str(aim_root), read_only=True) for h in index_runs(aim_root)):
            # failed on main: each configuration was an Aim experiment of its own, with nothing linking them
            assert run.experiment == "grid" and run["sweep"]["name"] == "grid"
            assert (
                run["sweep"]["configuration"]
                == run["__system_params"]["config"]["experiment"]
                == run.name.rsplit("_seed", 1)[0]
            )
            assert f"bond_dim{run['sweep']['bond_dim']}" in run.name


@pytest.mark.parametrize("executor", ["local", "dask"])
@pytest.mark.slow
def test_a_grid_sweep_trains_and_tracks_every_run_once(tmp_path, executor):
    done = sweep(tmp_path, str(_write_sweep(tmp_path)), "--executor", executor, "--workers", "2")
    assert done.returncode == _exit_code(tmp_path), done.stderr
    check_sweep(tmp_path, tmp_path / "aim")
    assert "best on validation: " in done.stdout and (tmp_path / "results_sweep_grid.png").stat().st_size > 1000
    closing = done.stdout.splitlines()[-1]  # where the runs are, and how to read them back, as run_*.sh says it
    assert closing.startswith("runs recorded by file: experiment_logs/, aim: ") and " summary --from file:" in closing
    lines = done.stdout.splitlines()  # the table, best first
    assert lines[2].split()[0] == _results(tmp_path)["best"]["experiment"]


def test_a_sweep_run_trains_exactly_as_the_script(tmp_path, run_script):
    done = sweep(tmp_path, str(_write_sweep(tmp_path)), "--workers", "2", TRACKER_BACKEND="none")
    assert done.returncode == _exit_code(tmp_path), done.stderr
    (configuration,) = [c for c in _results(tmp_path)["configurations"] if c["values"] == {"bond_dim": 4, "l": 3}]
    script = run_script("mpo2", BOND_DIM="4", L="3", N_SAMPLES="200", N_EPOCHS="3", TRACKER_BACKEND="none")
    assert script.returncode == (0 if configuration["n_success"] == 2 else 1), script.stderr
    by_script = {r["seed"]: r for r in json.loads((tmp_path / "results_mpo2_experiment.json").read_text())["results"]}
    for entry in configuration["runs"]:
        for key in ("test_r2", "val_r2", "train_loss"):  # torch's thread count may change summation orders
            assert entry[key] == pytest.approx(by_script[entry["seed"]][key], rel=1e-6, abs=1e-9)


def test_a_sweep_s_runs_name_its_command_run_git_once_and_reproduce(tmp_path):
    import shutil

    calls, wrapper = tmp_path / "git-calls", tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$1 $2 $3" >> {calls}\nexec {shutil.which("git")} "$@"\n')
    wrapper.chmod(0o755)
    path = _write_sweep(tmp_path)
    done = sweep(
        tmp_path, str(path), "--workers", "2", TRACKER_BACKEND="file", PATH=f"{wrapper.parent}:{os.environ['PATH']}"
    )
    assert done.returncode == _exit_code(tmp_path), done.stderr
    records, _ = read_runs("file", str(tmp_path / "experiment_logs"))
    assert sorted(r["experiment_name"] for r in records) == NAMES
    for record in records:
        assert record["provenance"]["command"]["argv"] == [
            "python",
            "-m",
            "experiments.sweep",
            str(path),
            "--workers",
            "2",
        ]
        assert record["provenance"]["code"]["directory"] == str(REPO / "experiments")
    statuses = [line for line in calls.read_text().splitlines() if " status " in f" {line} "]
    assert len(statuses) == 1, statuses  # once, by the driver that records every run (not per worker, per run)
    recorded = f"file:{tmp_path / 'experiment_logs'}"
    again = subprocess.run(
        [str(Path(sys.executable).parent / "ntn-trackers"), "reproduce", "grid_bond_dim4_l3_seed1", "--from", recorded],
        cwd=REPO,  # reproduce re-trains with the code of the checkout it is started from, and only that
        capture_output=True,
        text=True,
        timeout=300,
    )
    # identical, or within the tolerance when the workers' thread count summed in another order
    assert again.returncode == 0 and "reproduced: all 7 figures" in again.stdout, again.stdout + again.stderr


def _journaled(tmp_path: Path) -> int:
    """Runs recorded in the sweep's journal since the results file was last written."""
    try:
        return len((tmp_path / "results_sweep_grid.journal.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _started(tmp_path: Path, recorded: int, process: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until the sweep has recorded `recorded` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if _results(tmp_path)["n_recorded"] + _journaled(tmp_path) >= recorded:
                return
        except (FileNotFoundError, ValueError):
            if _journaled(tmp_path) >= recorded:
                return
        time.sleep(0.05)
    raise AssertionError("the sweep recorded nothing in time")


@pytest.mark.slow
def test_an_interrupted_sweep_run_again_trains_only_the_missing_runs(tmp_path):
    path = str(_write_sweep(tmp_path, epochs=40))
    first = sweep(tmp_path, path, "--workers", "2", background=True)
    _started(tmp_path, 2, first)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and err.strip().count("\n") <= 1, err
    recorded = _results(tmp_path)["n_recorded"]
    assert 2 <= recorded < 8 and f"interrupted by SIGINT: {recorded} of 8 runs recorded" in err
    first_runs = [(c["experiment"] + f"_seed{r['seed']}", r["success"]) for c in _results(tmp_path)["configurations"]
                  for r in c["runs"]]  # fmt: skip
    kept = {name for name, success in first_runs if success}  # a run recorded as failed is trained again
    again = len(first_runs) - len(kept)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "experiment_logs").glob("*.json")}
    second = sweep(tmp_path, path, "--workers", "2")
    assert second.returncode == _exit_code(tmp_path), second.stderr
    expected = f"{8 - len(kept)} of 8 runs to train ({len(kept)} already recorded in results_sweep_grid.json"
    assert expected + (f"; {again} recorded as failed, trained again)" if again else ")") in second.stderr
    retrained = {
        p.stem for p in (tmp_path / "experiment_logs").glob("*.json") if before.get(p.name) != p.stat().st_mtime_ns
    }
    assert retrained == set(NAMES) - kept  # exactly the runs the first call did not record
    check_sweep(tmp_path, tmp_path / "aim")
    third = sweep(tmp_path, path, "--workers", "2", "--keep-failed")  # failed on main: no word of what it trained
    assert third.returncode == _exit_code(tmp_path), third.stderr
    assert "all 8 runs recorded in results_sweep_grid.json: nothing to train" in third.stderr


class Cluster:
    """A `dask scheduler` and `dask worker` processes on 127.0.0.1, as on a cluster's hosts."""

    def __init__(self, tmp_path: Path, n_workers: int, env: dict[str, str], scheduler_env: dict[str, str]) -> None:
        self.port = _aim_servers().free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log = open(tmp_path / "dask.log", "w")
        start = dict(cwd=tmp_path, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
            **start | {"env": scheduler_env},
        )
        worker = [DASK, "worker", self.address, "--nthreads", "1", "--no-dashboard", "--no-nanny"]
        self.workers = [subprocess.Popen(worker, **start) for _ in range(n_workers)]

    def stop(self) -> None:
        """The workers first, then the scheduler: a worker whose scheduler has gone spends 30 s trying to
        reach it again before it ends (that was 60 s of this suite)."""
        for group in (self.workers, [self.scheduler]):
            for process in group:
                process.terminate()
            for process in group:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        self.log.close()


@pytest.fixture
def cluster(tmp_path):
    """`dask scheduler` and `dask worker`s as docs/experiments.md's recipe starts them: both with
    PYTHONPATH=REPO, the workers with DASK_CONFIG and NTN_DATA_DIR (they record nothing: no tracker
    variable); `scheduler` and `extra` change the scheduler's and the workers' environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRACKER_BACKEND", "AIM_REPO", "TRACKER_DIR")}
    env |= {"PYTHONPATH": str(REPO), "DASK_CONFIG": str(REPO / "experiments" / "dask")}
    made = []

    def start(n_workers: int = 2, scheduler: dict[str, str] | None = None, **extra: str) -> Cluster:
        scheduler_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(REPO)}
        made.append(Cluster(tmp_path, n_workers, env | extra, scheduler_env | (scheduler or {})))
        return made[-1]

    yield start
    for c in made:
        c.stop()


@pytest.mark.parametrize("where", ["local", "cluster"])
def test_every_run_is_in_one_aim_server_when_the_sweep_ends(tmp_path, cluster, where):
    server = _aim_servers().AimServer(tmp_path / "server-repo")
    try:
        remote = {"AIM_REPO": server.url}  # the default delivery interval: the sweep's end asks for delivery
        args = ("--workers", "2") if where == "local" else ("--scheduler", cluster().address)  # the driver delivers
        done = sweep(tmp_path, str(_write_sweep(tmp_path)), *args, **remote)
    finally:
        # at once: what the sweep did not wait for is cut off here. (The repository is read once the server has
        # closed it: a read-only open of a run's storage while the server flushes it can miss its last writes.)
        server.stop()
    assert done.returncode == _exit_code(tmp_path), done.stderr
    if where == "cluster":
        assert f"on a Dask cluster at {args[1]}" in done.stderr
    check_sweep(tmp_path, server.root)  # every run there once, ended as in its run file


def test_a_killed_worker_s_runs_finish_exactly_once(tmp_path, cluster):
    dask = cluster()
    path = str(_write_sweep(tmp_path, epochs=40))
    process = sweep(tmp_path, path, "--scheduler", dask.address, background=True)
    _started(tmp_path, 1, process)
    dask.workers[0].kill()  # SIGKILL, mid-run: Dask runs its runs again on the other worker
    _, err = process.communicate(timeout=600)
    assert process.returncode == _exit_code(tmp_path), err
    check_sweep(tmp_path, tmp_path / "aim")


SECRET = "s3cr3t-Value-42xyz"
MIXED = SWEEP.replace('dataset = "synthetic"\n', "").replace("l = [2, 3]", 'dataset = ["synthetic", "iris"]')
HUGE = SWEEP.replace("[2, 4]", str(list(range(1, 1001)))).replace("l = [2, 3]", "l = [2, 3]\ninit_strength = " + str(
    [0.1 * (i + 1) for i in range(1000)]))  # fmt: skip


@pytest.mark.parametrize(
    "text, args, env, message",
    [
        (SWEEP.replace("n_samples", "samples"), (), {}, "settings.samples is not a setting; allowed: dataset"),
        (SWEEP.replace("[2, 4]", "[0, 4]"), (), {}, "grid.bond_dim='0' must be an integer >= 1"),
        (SWEEP.split("[grid]")[0], (), {}, "[grid] is empty"),
        ("name = ", (), {}, "not a TOML file"),
        (SWEEP.replace('"synthetic"', '"mnist"'), (), {}, "settings.dataset='mnist' must be one of: california"),
        (SWEEP, ("--executor", "slurm"), {}, "--executor='slurm' must be one of: local, dask"),
        # failed on main: every run trained and failed with KeyError: 'mpo3'
        (SWEEP.replace('"mpo2"', '"mpo3"'), (), {}, "model='mpo3' must be one of: mpo2, lmpo2, mmpo2"),
        (SWEEP, ("--workers", "0"), {}, "--workers='0' must be an integer >= 1"),
        (SWEEP, ("--workers", "100000"), {}, "--workers=100000 is more than the "),
        (SWEEP, ("--executor", "dask"), {"SWEEP_WORKERS": "100000"}, "SWEEP_WORKERS=100000 is more than the "),
        (SWEEP, (), {"TORCH_THREADS": "100000"}, "TORCH_THREADS=100000 is more than the "),
        (SWEEP, (), {"TORCH_THREADS": "x"}, "TORCH_THREADS='x' must be an integer >= 1"),
        (SWEEP, ("--scheduler", "tcp://127.0.0.1:9"), {}, "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"),
        # each of these failed on main: a traceback, a run of every configuration that failed, or files lost
        (SWEEP, ("--scheduler", "garbage"), {}, "--scheduler='garbage' must be a Dask scheduler's address"),
        (SWEEP, ("--scheduler", "inproc://x"), {}, "--scheduler='inproc://x' must be a Dask scheduler's address"),
        (SWEEP, ("--scheduler", "tls://"), {}, "--scheduler='tls://' must be a Dask scheduler's address"),
        (SWEEP, ("--scheduler", f"tcp://me:{SECRET}@127.0.0.1:9"), {}, "--scheduler='tcp://me:[REDACTED]@127.0.0.1:9'"),
        # failed on main: the part of a password after an '@', '/' or ' ', and a token as the user part, printed
        (SWEEP, ("--scheduler", f"tcp://me:x@y/{SECRET} z@h:9"), {}, "--scheduler='tcp://me:[REDACTED]@h:9'"),
        (SWEEP, ("--scheduler", f"tcp://{SECRET}@h:9"), {}, "--scheduler='tcp://[REDACTED]@h:9'"),
        (SWEEP, ("--output", "res.png"), {}, "--output='res.png' must be a .json file"),
        (SWEEP.replace("[settings]", '[settings]\ndevice = "cuda"'), (), {}, "device='cuda': "),
        (SWEEP.replace('"synthetic"', '"california_housing"'), (), {"NTN_DATA_DIR": "no"}, "NTN_DATA_DIR='no'"),
        (SWEEP, (), {"TRACKER_DIR": "grid.toml/logs"}, "TRACKER_DIR 'grid.toml/logs' is not a writable directory"),
        (MIXED, (), {}, "mixes regression and classification"),
        (HUGE, (), {}, "[grid] makes 2000000 configurations, more than 10000"),
        (SWEEP.replace('name = "grid"', f'name = "grid-{SECRET}"'), (), {"MY_TOKEN": SECRET}, "name holds the"),
        (SWEEP, (), {"AIM_REPOS": ".aim"}, "AIM_REPOS is not a setting; did you mean AIM_REPO?"),
    ],
)
def test_bad_input_is_one_line_before_any_run(sweep_here, tmp_path, text, args, env, message):
    path = _write_sweep(tmp_path, text=text)
    code, out, err = sweep_here(str(path), *args, **env)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and out == "", err
    assert message in err and SECRET not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


@pytest.mark.parametrize(
    "damage",
    ['{"sweep": "grid", "configurations": 3}', '{"sweep": "grid", "configurations": [{"runs": 5}]}', "[1, 2"],
)
def test_a_damaged_results_file_is_one_line_and_kept(sweep_here, tmp_path, damage):
    (tmp_path / "results_sweep_grid.json").write_text(damage)
    code, _, err = sweep_here(str(_write_sweep(tmp_path)))
    assert code == 2 and err.count("\n") == 1 and "results_sweep_grid.json" in err and "move it away" in err, err
    assert (tmp_path / "results_sweep_grid.json").read_text() == damage


@pytest.mark.slow
def test_the_progress_bar_says_what_it_waits_for_and_counts_failures(tmp_path):
    """Failed on main: the bar sat at 0 % without a word while workers started, and then waited for the
    trackers at 100 % without a word; it showed no failures."""
    import fcntl
    import pty
    import struct
    import termios

    text = SWEEP.replace("n_samples = 200", "n_samples = 200\ninit_strength = 1e200").replace("[2, 4]", "[2]")
    path = _write_sweep(tmp_path, text=text)
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    command = ["bash", str(REPO / "experiments" / "run_sweep.sh"), path.name, "--workers", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, env=_env(tmp_path, TRACKER_BACKEND="file"), stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed: the sweep ended
            break
        if not chunk:
            break
        shown += chunk
    assert process.wait(600) == 1
    screens = shown.decode(errors="replace").replace("\r", "\n").splitlines()
    assert any(s.startswith("workers starting:   0%") for s in screens)
    assert any(s.startswith("training:") and "failed=" in s for s in screens)
    n = _results(tmp_path)["n_runs"]
    assert any(s.startswith(f"trackers delivering {n} runs: 100%") and f"failed={n}" in s for s in screens)
    assert not any("Warning" in s for s in screens), screens


@pytest.mark.slow
def test_failing_runs_are_recorded_as_failed_and_the_sweep_goes_on(tmp_path):
    text = SWEEP.replace("n_samples = 200", "n_samples = 200\ninit_strength = 1e200").replace("[2, 4]", "[2]")
    done = sweep(tmp_path, str(_write_sweep(tmp_path, epochs=1, text=text)), "--workers", "2")
    assert done.returncode == 1, done.stderr
    results = _results(tmp_path)
    assert results["n_recorded"] == 4 and results["best"] is None
    for configuration in results["configurations"]:
        assert configuration["n_total"] == 2 and configuration["n_success"] == 0
    for _name, run in _file_runs(tmp_path / "experiment_logs").items():
        assert run["summary"]["status"] == "failed" and run["summary"]["error"]
    # run again: the failed runs are trained again, and the sweep still says they failed
    again = sweep(tmp_path, str(tmp_path / "grid.toml"), "--workers", "2")
    assert again.returncode == 1 and "4 of 4 runs to train (0 already recorded" in again.stderr, again.stderr
    assert "4 recorded as failed, trained again" in again.stderr
    # the closing line says why, and that training them again as they are fails the same way (#40 finding 8)
    (error, *_) = [r["error"] for c in _results(tmp_path)["configurations"] for r in c["runs"]]
    closing = again.stderr.strip().splitlines()[-1]
    assert closing.startswith(f'4 runs failed in training (grid_bond_dim2_l2 seed 0 and 3 other runs: "{error}"') and (
        "they fail the same way: change their settings" in closing
    ), again.stderr
    assert "run the same command again" not in again.stderr
    kept = sweep(tmp_path, str(tmp_path / "grid.toml"), "--keep-failed")
    assert kept.returncode == 1 and "runs to train" not in kept.stderr, kept.stderr
    assert _results(tmp_path)["n_failed"] == 4


def test_a_sweep_holds_its_experiments_as_run_scripts_do(tmp_path, run_script):
    """Failed on main: a sweep took no experiment lock, so run_mpo2.sh with one configuration's name wrote
    the same run files at once (invalid JSON in 3 of 4 tries, both exit 0)."""
    process = sweep(tmp_path, str(_write_sweep(tmp_path, epochs=100000)), "--workers", "1", background=True)
    try:  # runs that train for hours: the sweep holds its names while the script starts, however fast it is
        deadline = time.monotonic() + 300
        while not list((tmp_path / "experiment_logs").glob("*.json")):  # its first run started: it holds them
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()  # its runs would train for hours
                pytest.fail(f"the sweep's first run did not start: {process.communicate()}")
            time.sleep(0.05)
        script = run_script("mpo2", EXPERIMENT_NAME="grid_bond_dim4_l3", TRACKER_BACKEND="file")
        assert script.returncode == 2 and script.stderr.count("\n") == 1, script.stderr
        assert f"is being trained by process {process.pid}" in script.stderr
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=120)
    for path in (tmp_path / "experiment_logs").glob("*.json"):
        json.loads(path.read_text())  # every run file parses


ONE = """
name = "grid"
model = "mpo2"
seeds = [0]
[settings]
dataset = "synthetic"
n_samples = 200
n_epochs = 1
[grid]
bond_dim = [2]
"""


def _run_files(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (tmp_path / "experiment_logs").glob("*.json")}


def test_a_name_an_ended_sweep_holds_is_refused_to_a_script_of_other_settings(tmp_path, train_here):
    """Failed on main: once the sweep had ended, run_mpo2.sh with its experiment name and other settings was
    accepted and replaced the sweep's run file, while the sweep's results still counted the old run."""
    done = sweep(tmp_path, str(_write_sweep(tmp_path, text=ONE)), "--workers", "1", TRACKER_BACKEND="file")
    assert done.returncode in (0, 1) and _results(tmp_path)["n_recorded"] == 1, done.stderr
    before = _run_files(tmp_path)
    assert list(before) == ["grid_bond_dim2_seed0.json"]
    same = {"EXPERIMENT_NAME": "grid_bond_dim2", "BOND_DIM": "2", "N_SAMPLES": "200", "N_EPOCHS": "1"}
    code, _, err = train_here("mpo2", **same | {"N_EPOCHS": "2", "SEEDS": "0"})
    assert code == 2 and err.count("\n") == 1, err
    assert "EXPERIMENT_NAME='grid_bond_dim2' already holds runs trained with other settings: " in err
    assert "N_EPOCHS=1 (this run: 2)" in err
    assert _run_files(tmp_path) == before and not (tmp_path / "results_grid_bond_dim2.json").exists()
    assert train_here("mpo2", **same | {"SEEDS": "1"})[0] in (0, 1)  # more seeds of the same settings: welcome
    assert _run_files(tmp_path)["grid_bond_dim2_seed0.json"] == before["grid_bond_dim2_seed0.json"]


def test_a_name_a_script_holds_is_refused_to_a_sweep_of_other_settings(tmp_path, train_here, sweep_here):
    """Failed on main: a sweep whose configuration bore a script's experiment name trained it again with its
    own settings, replacing the script's run file."""
    script = {"EXPERIMENT_NAME": "grid_bond_dim2", "BOND_DIM": "2", "N_SAMPLES": "200", "N_EPOCHS": "2", "SEEDS": "0"}
    assert train_here("mpo2", **script)[0] in (0, 1)
    before = _run_files(tmp_path)
    code, out, err = sweep_here(str(_write_sweep(tmp_path, text=ONE)), "--workers", "1", TRACKER_BACKEND="file")
    assert code == 2 and err.count("\n") == 1 and out == "", err
    assert "experiment 'grid_bond_dim2' already holds runs trained with other settings: N_EPOCHS=2 (this run: 1)" in err
    assert _run_files(tmp_path) == before and not (tmp_path / "results_sweep_grid.json").exists()


def test_a_sweep_whose_fixed_setting_changed_is_refused_by_its_own_results_file(tmp_path):
    """Failed on main: the earlier runs were set aside and the same names trained again with the new
    setting, replacing the earlier runs in every tracker (same run_id)."""
    from experiments.settings import SettingError
    from experiments.sweep_results import Record
    from experiments.sweepfile import load

    path = tmp_path / "results_sweep_grid.json"
    record = Record(load(_write_sweep(tmp_path, text=ONE)), path)
    record.add(record.sweep.configurations[0], {"seed": 0, "test_r2": 0.5, "success": True})
    record.write()
    with pytest.raises(SettingError, match=r"'grid_bond_dim2' already holds runs .*: N_EPOCHS=1 \(this run: 3\)"):
        Record(load(_write_sweep(tmp_path, text=ONE.replace("n_epochs = 1", "n_epochs = 3"))), path)
    assert Record(load(_write_sweep(tmp_path, text=ONE.replace("seeds = [0]", "seeds = [0, 1]"))), path).missing()


@pytest.mark.slow
def test_two_sweeps_of_one_name_from_two_directories_keep_both_sets_in_one_aim_repository(tmp_path):
    """Failed on main: run_id was only the run's name, so the second sweep's runs replaced the first's."""
    repo = tmp_path / "shared-aim"
    for directory in ("alice", "bob"):
        (tmp_path / directory).mkdir()
        done = sweep(tmp_path / directory, str(_write_sweep(tmp_path / directory)), "--workers", "2",
                     TRACKER_BACKEND="aim", AIM_REPO=str(repo))  # fmt: skip
        assert done.returncode == _exit_code(tmp_path / directory), done.stderr
    records, problems = read_runs("aim", str(repo))
    assert problems == [] and sorted(r["experiment_name"] for r in records) == sorted(NAMES * 2)
    ids = {_results(tmp_path / d)["sweep_id"] for d in ("alice", "bob")}
    assert len(ids) == 2 and {r["config"]["run_id"].rpartition("@")[2] for r in records} == ids


@pytest.mark.slow
def test_a_value_removed_from_the_grid_keeps_its_runs(tmp_path):
    """Failed on main: removing a value from [grid] and running again dropped its configurations' runs from
    the results file without a word."""
    full = _write_sweep(tmp_path, epochs=1)
    assert sweep(tmp_path, str(full), "--workers", "2", TRACKER_BACKEND="none").returncode in (0, 1)
    recorded = {c["experiment"]: c["runs"] for c in _results(tmp_path)["configurations"]}
    full.write_text(SWEEP.format(epochs=1).replace("[2, 4]", "[2]"))
    done = sweep(tmp_path, str(full), TRACKER_BACKEND="none")
    assert "2 configurations recorded earlier are no longer in the grid" in done.stderr, done.stderr
    assert "runs to train" not in done.stderr  # nothing new: bond_dim 2 is recorded
    removed = {c["experiment"]: c["runs"] for c in _results(tmp_path)["removed"]}
    assert removed == {name: runs for name, runs in recorded.items() if "bond_dim4" in name}
    full.write_text(SWEEP.format(epochs=1))  # the value back: its runs come back, nothing is trained again
    done = sweep(tmp_path, str(full), TRACKER_BACKEND="none")
    assert "runs to train" not in done.stderr and "removed" not in _results(tmp_path), done.stderr
    assert {c["experiment"]: c["runs"] for c in _results(tmp_path)["configurations"]} == recorded


@pytest.mark.slow
def test_workers_never_outlive_a_killed_sweep(tmp_path):
    """Failed on main: SIGKILL of the sweep left its workers running for good (255 MB each)."""
    import psutil

    process = sweep(tmp_path, str(_write_sweep(tmp_path, epochs=400)), "--workers", "2", background=True)
    _started(tmp_path, 1, process)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert workers
    process.kill()
    process.communicate()
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert alive == [], alive
    for path in (tmp_path / "experiment_logs").glob("*.json"):
        summary = json.loads(path.read_text())["summary"]  # the driver, killed, could not end its runs in progress
        assert summary["status"] in ("finished", "failed", "running"), summary


def test_a_dask_worker_without_the_repository_is_one_line_before_any_run(tmp_path, cluster):
    """Failed on main: a worker that could not import `experiments` ended the sweep in a traceback."""
    dask = cluster(PYTHONPATH="")  # as docs/experiments.md's cluster recipe, without PYTHONPATH on the worker's host
    done = sweep(tmp_path, str(_write_sweep(tmp_path)), "--scheduler", dask.address)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "a Dask worker cannot import this repository's experiments" in done.stderr
    assert "PYTHONPATH=/path/to/ntn" in done.stderr and not (tmp_path / "results_sweep_grid.json").exists()


def test_a_scheduler_without_the_repository_is_one_line_before_any_run(tmp_path, cluster):
    """Failed on main: docs/experiments.md's recipe started the scheduler without PYTHONPATH; it could not
    read the runs' tasks and every run was recorded as failed (rc 1), the workers having passed preflight."""
    dask = cluster(scheduler={"PYTHONPATH": ""})
    done = sweep(tmp_path, str(_write_sweep(tmp_path)), "--scheduler", dask.address, TRACKER_DIR=str(tmp_path / "logs"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"the Dask scheduler at '{dask.address}' cannot import this repository's experiments" in done.stderr
    assert "PYTHONPATH=/path/to/ntn" in done.stderr and not (tmp_path / "results_sweep_grid.json").exists()


def test_every_run_on_a_cluster_is_recorded_in_the_driver_s_tracker_dir(tmp_path, cluster):
    """Failed on main: each worker recorded its runs in its own TRACKER_DIR (a relative one here, from its
    own working directory), so one sweep's runs landed in two places and no lock guarded them; then the
    sweep was refused. Now workers only compute: the driver records every run, in its own TRACKER_DIR."""
    (tmp_path / "elsewhere").mkdir()
    dask = cluster(TRACKER_DIR="elsewhere/logs", TRACKER_BACKEND="file")  # the workers' own: never used
    done = sweep(tmp_path, str(_write_sweep(tmp_path)), "--scheduler", dask.address, TRACKER_DIR=str(tmp_path / "logs"),
                 TRACKER_BACKEND="file")  # fmt: skip
    assert done.returncode == _exit_code(tmp_path), done.stderr
    assert sorted(_file_runs(tmp_path / "logs")) == NAMES and not (tmp_path / "elsewhere" / "logs").exists()
    assert not (tmp_path / "experiment_logs").exists()
    for run in _file_runs(tmp_path / "logs").values():  # trained on a worker, recorded by the driver
        assert run["provenance"]["machine"]["device"] == "cpu"
        assert run["config"]["tracker_dir"] == str(tmp_path / "logs")


def test_a_lost_scheduler_is_rc_1_naming_what_was_recorded(tmp_path, cluster):
    """Failed on main: rc 2 ("bad input, nothing trained", after a traceback of Dask's) once runs had been
    recorded."""
    dask = cluster()
    process = sweep(tmp_path, str(_write_sweep(tmp_path, epochs=40)), "--scheduler", dask.address, background=True)
    _started(tmp_path, 1, process)
    dask.scheduler.kill()
    _, err = process.communicate(timeout=300)
    recorded = _results(tmp_path)["n_recorded"]
    assert process.returncode == 1 and "Traceback" not in err and recorded >= 1, err
    assert f"lost the Dask scheduler at {dask.address} (" in err, err
    assert f"): {recorded} of 8 runs are recorded in results_sweep_grid.json; run the same command again to train " \
           f"the other {8 - recorded}" in err, err  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_driver_stops_its_runs_on_a_cluster(tmp_path, cluster, signum):
    """Failed on main: Dask's cancel left the runs in progress training on the cluster's workers (for
    minutes) after the driver had ended. Now the driver records them as interrupted, stops them at their
    next epoch boundary, and ends once no worker trains any of them."""
    from distributed import Client

    dask = cluster()
    path = str(_write_sweep(tmp_path, epochs=100000))  # runs that would train for hours
    process = sweep(tmp_path, path, "--scheduler", dask.address, background=True, TRACKER_BACKEND="file")
    files = [tmp_path / "experiment_logs" / f"{name}.json" for name in NAMES]
    deadline = time.monotonic() + 300  # a loaded machine starts workers slowly
    while sum(f.exists() and len(json.loads(f.read_text())["metrics_log"]) > 1 for f in files) < 2:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()  # never left training: the sweep's runs would go on for hours
            pytest.fail(f"two runs did not train two epochs: {process.communicate()}")
        time.sleep(0.1)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum and err.splitlines()[-1].startswith(f"interrupted by {name}: "), err
    with Client(dask.address, timeout="30s") as client:  # what each worker's threads run now: nothing
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2 and client.run(lambda dask_worker: dict(dask_worker.active_threads)) == {
            worker: {} for worker in workers
        }
    summaries = [json.loads(f.read_text())["summary"] for f in files if f.exists()]
    assert len(summaries) == 2 and all(s == {**s, "status": "interrupted", "error": f"interrupted by {name}"}
                                       for s in summaries), summaries  # fmt: skip


def test_runs_are_journaled_in_o1_and_a_killed_sweep_s_journal_counts_when_run_again(tmp_path):
    from experiments.sweep_results import COMPACT_EVERY, Record
    from experiments.sweepfile import load

    grid = load(_write_sweep(tmp_path))
    path = tmp_path / "results_sweep_grid.json"
    record = Record(grid, path)
    first, second = grid.configurations[:2]
    for configuration, seed in ((first, 0), (first, 1), (second, 0)):
        record.add(configuration, {"seed": seed, "test_r2": 0.5 + seed, "success": True})
    assert not path.exists() and len(record.journal.read_text().splitlines()) == 3  # no rewrite per run
    with open(record.journal, "a") as journal:
        journal.write('["grid_bond_dim2_l2", {"seed": 1, "test')  # the line a SIGKILL tore
    del record  # killed: nothing compacted
    again = Record(grid, path)
    assert (first, 0) not in again.missing() and (second, 0) not in again.missing() and len(again.missing()) == 5
    again.compact()
    assert not again.journal.exists()
    document = json.loads(path.read_text())
    assert document["n_recorded"] == 3 and {r["seed"] for r in document["configurations"][0]["runs"]} == {0, 1}
    for seed in range(COMPACT_EVERY):  # the file is rewritten now and then, not after every run
        again.add(grid.configurations[seed % 4], {"seed": seed % 2, "test_r2": 0.1, "success": True})
    assert not again.journal.exists() and json.loads(path.read_text())["n_recorded"] == 6


def test_grid_values_that_differ_in_an_exponent_s_sign_name_two_experiments(tmp_path):
    """Failed before: 1e+20 was named 1e-20, so jitter_min = [1e20, 1e-20] made two configurations of one
    experiment name, trained into one run file ("1 runs did not run (a worker process ended)")."""
    from experiments.sweepfile import load

    path = tmp_path / "lab.toml"
    text = 'name = "lab"\nmodel = "mpo2"\n[settings]\ndataset = "synthetic"\n[grid]\njitter_min = [1e20, 1e-20]\n'
    path.write_text(text)
    names = [c.settings.experiment_name for c in load(path).configurations]
    assert names == ["lab_jitter_min1e20", "lab_jitter_min1e-20"]


def test_the_sweep_table_fits_80_and_120_columns_dropping_the_train_figure_first(monkeypatch):
    """#40 finding 4, for a sweep: its table was ~100 columns wide whatever the terminal."""
    from experiments.sweep_results import table

    def configuration(name: str, val: float | None) -> dict:
        figures = {
            f"{s}_r2_{k}": None if val is None else val + d
            for s, d in (("train", 0.1), ("val", 0), ("test", -0.02))
            for k in ("mean", "std")
        }
        return {"experiment": name, "metric": "r2", "n_success": 0 if val is None else 2, "n_total": 2} | figures

    document = {
        "configurations": [
            configuration("grid_bond_dim2_l2", 0.5),
            configuration("grid_bond_dim4_l3_jitter_start0.01", 0.7),
            configuration("grid_bond_dim8_l3", None),
        ]
    }
    monkeypatch.setenv("COLUMNS", "120")
    wide = table(document).splitlines()
    assert wide[0].split() == ["experiment", "(best", "first)", "seeds", "ok", "val", "r2", "test", "r2", "train", "r2"]
    assert [line.split()[0] for line in wide[2:]] == [
        "grid_bond_dim4_l3_jitter_start0.01",
        "grid_bond_dim2_l2",
        "grid_bond_dim8_l3",
    ]
    monkeypatch.setenv("COLUMNS", "80")
    narrow = table(document).splitlines()
    assert max(map(len, narrow)) <= 80 and "train" not in narrow[0] and "test r2" in narrow[0], narrow
    assert narrow[-2].startswith("not shown at this width: train r2")
