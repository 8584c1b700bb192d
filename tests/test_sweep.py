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
pytestmark = pytest.mark.slow

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
        assert run["config"]["run_id"] == name
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


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_a_grid_sweep_trains_and_tracks_every_run_once(tmp_path, executor):
    done = sweep(tmp_path, str(_write_sweep(tmp_path)), "--executor", executor, "--workers", "2")
    assert done.returncode == 0, done.stderr
    check_sweep(tmp_path, tmp_path / "aim")
    assert "best on validation: " in done.stdout and (tmp_path / "results_sweep_grid.png").stat().st_size > 1000
    lines = done.stdout.splitlines()  # the table, best first
    assert lines[2].split()[0] == _results(tmp_path)["best"]["experiment"]


def test_a_sweep_run_trains_exactly_as_the_script(tmp_path, run_script):
    done = sweep(tmp_path, str(_write_sweep(tmp_path)), "--workers", "2", TRACKER_BACKEND="none")
    assert done.returncode == 0, done.stderr
    (configuration,) = [c for c in _results(tmp_path)["configurations"] if c["values"] == {"bond_dim": 4, "l": 3}]
    script = run_script("mpo2", BOND_DIM="4", L="3", N_SAMPLES="200", N_EPOCHS="3", TRACKER_BACKEND="none")
    assert script.returncode == 0, script.stderr
    by_script = {r["seed"]: r for r in json.loads((tmp_path / "results_mpo2_experiment.json").read_text())["results"]}
    for entry in configuration["runs"]:
        for key in ("test_r2", "val_r2", "train_loss"):  # torch's thread count may change summation orders
            assert entry[key] == pytest.approx(by_script[entry["seed"]][key], rel=1e-6, abs=1e-9)


def _started(tmp_path: Path, recorded: int, process: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until the sweep has recorded `recorded` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if _results(tmp_path)["n_recorded"] >= recorded:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("the sweep recorded nothing in time")


def test_an_interrupted_sweep_run_again_trains_only_the_missing_runs(tmp_path):
    path = str(_write_sweep(tmp_path, epochs=40))
    first = sweep(tmp_path, path, "--workers", "2", background=True)
    _started(tmp_path, 2, first)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and err.strip().count("\n") <= 1, err
    recorded = _results(tmp_path)["n_recorded"]
    assert 2 <= recorded < 8 and f"interrupted by SIGINT: {recorded} of 8 runs recorded" in err
    kept = {c["experiment"] + f"_seed{r['seed']}" for c in _results(tmp_path)["configurations"] for r in c["runs"]}
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "experiment_logs").glob("*.json")}
    second = sweep(tmp_path, path, "--workers", "2")
    assert second.returncode == 0, second.stderr
    assert f"{8 - recorded} of 8 runs to train ({recorded} already recorded" in second.stderr
    retrained = {
        p.stem for p in (tmp_path / "experiment_logs").glob("*.json") if before.get(p.name) != p.stat().st_mtime_ns
    }
    assert retrained == set(NAMES) - kept  # exactly the runs the first call did not record
    check_sweep(tmp_path, tmp_path / "aim")


class Cluster:
    """A `dask scheduler` and `dask worker` processes on 127.0.0.1, as on a cluster's hosts."""

    def __init__(self, tmp_path: Path, n_workers: int, env: dict[str, str]) -> None:
        self.port = _aim_servers().free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log = open(tmp_path / "dask.log", "w")
        start = dict(cwd=tmp_path, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"], **start
        )
        worker = [DASK, "worker", self.address, "--nthreads", "1", "--no-dashboard", "--no-nanny"]
        self.workers = [subprocess.Popen(worker, **start) for _ in range(n_workers)]

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            process.terminate()
        for process in [*self.workers, self.scheduler]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.log.close()


@pytest.fixture
def cluster(tmp_path):
    env = _env(tmp_path, PYTHONPATH=str(REPO), TRACKER_DIR=str(tmp_path / "experiment_logs"))
    made = []

    def start(n_workers: int = 2, **extra: str) -> Cluster:
        made.append(Cluster(tmp_path, n_workers, env | extra))
        return made[-1]

    yield start
    for c in made:
        c.stop()


@pytest.mark.parametrize("where", ["local", "cluster"])
def test_every_run_is_in_one_aim_server_when_the_sweep_ends(tmp_path, cluster, where):
    server = _aim_servers().AimServer(tmp_path / "server-repo")
    try:
        remote = {"AIM_REPO": server.url}  # the default delivery interval: the sweep's end asks for delivery
        args = ("--workers", "2") if where == "local" else ("--scheduler", cluster(**remote).address)
        done = sweep(tmp_path, str(_write_sweep(tmp_path)), *args, **remote)
        assert done.returncode == 0, done.stderr
        if where == "cluster":
            assert f"on a Dask cluster at {args[1]}" in done.stderr
        records, problems = read_runs("aim", str(server.root))  # at once: the sweep waited for delivery
        assert problems == [] and sorted(r["experiment_name"] for r in records) == NAMES
        assert all(r["summary"]["status"] in ("finished", "failed") for r in records)
    finally:
        server.stop()
    check_sweep(tmp_path, server.root)


def test_a_killed_worker_s_runs_finish_exactly_once(tmp_path, cluster):
    dask = cluster()
    path = str(_write_sweep(tmp_path, epochs=40))
    process = sweep(tmp_path, path, "--scheduler", dask.address, background=True)
    _started(tmp_path, 1, process)
    dask.workers[0].kill()  # SIGKILL, mid-run: Dask runs its runs again on the other worker
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    check_sweep(tmp_path, tmp_path / "aim")


@pytest.mark.parametrize(
    "text, args, message",
    [
        (SWEEP.replace("n_samples", "samples"), (), "settings.samples is not a setting; allowed: dataset, n_samples"),
        (SWEEP.replace("[2, 4]", "[0, 4]"), (), "grid.bond_dim='0' must be an integer >= 1"),
        (SWEEP.split("[grid]")[0], (), "[grid] is empty"),
        ("name = ", (), "not a TOML file"),
        (SWEEP.replace('"synthetic"', '"mnist"'), (), "settings.dataset='mnist' must be one of: california_housing"),
        (SWEEP, ("--executor", "slurm"), "--executor='slurm' must be one of: local, dask"),
        (SWEEP, ("--workers", "0"), "--workers='0' must be an integer >= 1"),
        (SWEEP, ("--scheduler", "tcp://127.0.0.1:9"), "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"),
    ],
)
def test_bad_input_is_one_line_before_any_run(tmp_path, text, args, message):
    done = sweep(tmp_path, str(_write_sweep(tmp_path, text=text)), *args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


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
