"""Sweeps: what a run costs in a large sweep; the README's bash loop against run_sweep.sh, the Dask path's
cost, and delivery into one aim server.

    NTN_DATA_DIR=../shared/data python benchmarks/bench_sweep.py --runs 1000 [--workers 2]
    NTN_DATA_DIR=../shared/data python benchmarks/bench_sweep.py [--rounds 3] [--bond-dims 4,6,8,10]

`--runs N [--before REV] [--rounds R]`: a sweep of N runs (N/10 configurations × 10 seeds; bond 6,
N_SAMPLES=500, 10 epochs, file backend), its driver in a fresh process, with this checkout's code and
(--before) a git revision's, interleaved: its wall time, the driver's CPU against its workers', the
per-run floor (one run trained in-process, no tracker), and torch's thread policy against torch's
default threads per run, on this machine idle and busy (a CPU-bound process per core beside it).
Targets (issue #29): the N=1000 sweep in <= 2 min on 2 cores; (#38) no slower than before the one runner.

Workload: 4 bond dimensions × 5 seeds of MPO2 on California housing at N_SAMPLES=500 (the README's loop),
file backend. Targets: run_sweep.sh local (2 workers) >= 3× faster than the loop; a Dask LocalCluster
(2 workers) <= 1.3× the local executor; Dask's per-run overhead over training in-process <= 50 ms;
delivery into one `aim server` >= 2 runs/s.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
SWEEP = """
name = "bench"
model = "mpo2"
seeds = [0, 1, 2, 3, 4]
[settings]
dataset = "california_housing"
n_samples = 500
[grid]
bond_dim = {bond_dims}
"""
BOND_DIMS = [4, 6, 8, 10]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO)) | extra
    if env.get("NTN_DATA_DIR"):  # the commands run in scratch directories
        env["NTN_DATA_DIR"] = os.path.abspath(env["NTN_DATA_DIR"])
    return env


def timed(command: list[str], cwd: Path, **env: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=_env(**env), check=True, capture_output=True)
    return time.perf_counter() - start


def bash_loop(cwd: Path, bond_dims: list[int] = BOND_DIMS) -> float:
    loop = (
        f"for b in {' '.join(map(str, bond_dims))}; do EXPERIMENT_NAME=bond_sweep_$b BOND_DIM=$b "
        f"bash {REPO}/experiments/run_mpo2.sh || exit 1; done"
    )
    return timed(["bash", "-c", loop], cwd)


def run_sweep(cwd: Path, *args: str, bond_dims: list[int] = BOND_DIMS, **env: str) -> float:
    (cwd / "bench.toml").write_text(SWEEP.format(bond_dims=bond_dims))
    return timed(["bash", str(REPO / "experiments" / "run_sweep.sh"), "bench.toml", *args], cwd, **env)


class _Runs:
    """A study of the runs given, for the runner: no pruning, no results file."""

    def __init__(self, tasks: list) -> None:
        self.tasks = list(tasks)

    def next_tasks(self, free: int) -> list:
        tasks, self.tasks = self.tasks[:free], self.tasks[free:]
        return tasks

    def on_epoch(self, task, epoch: int, scores: dict) -> list:
        return []

    def on_entry(self, task, entry: dict) -> None:
        return None

    def on_end(self, task, entry: dict) -> None:
        pass


def dask_overhead(n_runs: int = 20) -> tuple[float, float]:
    """Mean s per run, one torch thread each, through the runner tracked nowhere: trained in this process
    (its InlinePool), and on the sweep's Dask pool with one worker (a LocalCluster, as `--executor dask`
    starts it)."""
    sys.path.insert(0, str(REPO))
    import torch

    from experiments.dask_pool import DaskPool
    from experiments.runner import Progress, Runner, Task
    from experiments.sweepfile import load
    from experiments.workers import InlinePool

    torch.set_num_threads(1)

    def through(pool, configuration, name: str) -> float:
        tasks = [Task(configuration, seed, f"{name}{seed}") for seed in range(n_runs)]
        start = time.perf_counter()
        Runner(_Runs(tasks), [], {}, Progress(0, shown=False)).run(pool)
        return (time.perf_counter() - start) / n_runs

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.toml"
        path.write_text(SWEEP.format(bond_dims=[6]))
        (configuration,) = load(path, tracker_backend="none").configurations
        pool = DaskPool(1, None)
        in_process, through_dask = [], []
        try:
            through(InlinePool(), configuration, "warm")  # warm: imports, data set
            through(pool, configuration, "warm")
            for _ in range(3):  # interleaved rounds: both sides see the same drift of this machine
                in_process.append(through(InlinePool(), configuration, "p"))
                through_dask.append(through(pool, configuration, "d"))
        finally:
            pool.close()
    in_process, through_dask = sorted(in_process)[1], sorted(through_dask)[1]  # medians
    return in_process, through_dask


def aim_delivery(cwd: Path) -> list[list]:
    """30 runs into one `aim server`, each way on a fresh server, until everything is delivered: 6 concurrent
    run_mpo2.sh × 5 seeds (the issue's measurement), and a 6 bond dimensions × 5 seeds sweep on 2 local
    workers and on a 2-worker LocalCluster."""
    sys.path.insert(0, str(REPO / "plugins/ntn-tracker-aim/tests"))
    from conftest import AimServer

    def concurrent_scripts(where: Path, remote: dict[str, str]) -> float:
        start = time.perf_counter()
        launches = [
            subprocess.Popen(
                ["bash", str(REPO / "experiments/run_mpo2.sh")],
                cwd=where,
                env=_env(EXPERIMENT_NAME=f"concurrent_{b}", BOND_DIM=str(b), **remote),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for b in range(3, 9)
        ]
        assert all(p.wait() == 0 for p in launches)
        return time.perf_counter() - start

    ways = {
        "6 concurrent run_mpo2.sh, 5 seeds each": concurrent_scripts,
        "run_sweep.sh, local, 2 workers": lambda where, remote: run_sweep(
            where, "--workers", "2", bond_dims=list(range(3, 9)), **remote
        ),
        "run_sweep.sh --executor dask --workers 2": lambda where, remote: run_sweep(
            where, "--executor", "dask", "--workers", "2", bond_dims=list(range(3, 9)), **remote
        ),
    }
    rows = []
    for i, (how, way) in enumerate(ways.items()):
        where = cwd / str(i)
        where.mkdir()
        server = AimServer(where / "server")
        try:
            seconds = way(where, {"TRACKER_BACKEND": "aim", "AIM_REPO": server.url})
        finally:
            server.stop()
        rows.append([how, 30, f"{seconds:.1f}", f"{30 / seconds:.2f}"])
    return rows


def medians(rounds: int, bond_dims: list[int]) -> tuple[float, float, float]:
    """Median wall s of the loop, the local executor and a Dask LocalCluster over `rounds` interleaved
    rounds (each side sees the same drift of the machine)."""
    times: list[tuple[float, float, float]] = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, tempfile.TemporaryDirectory() as c:
            times.append(
                (
                    bash_loop(Path(a), bond_dims),
                    run_sweep(Path(b), "--workers", "2", bond_dims=bond_dims),
                    run_sweep(Path(c), "--executor", "dask", "--workers", "2", bond_dims=bond_dims),
                )
            )
    loop, local, dask = (statistics.median(column) for column in zip(*times))
    return loop, local, dask


LARGE = """
name = "large"
model = "mpo2"
seeds = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
[settings]
dataset = "california_housing"
n_samples = 500
n_epochs = 10
bond_dim = 6
[grid]
init_strength = {values}
"""


DRIVER = """
import contextlib, io, json, resource, sys, time
from pathlib import Path
sys.path[:0] = {paths!r}
from experiments.sweep import main
Path("large.toml").write_text({sweep!r})
start = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):  # its table of N/10 configurations
    code = main(["large.toml", "--workers", "{workers}"])
wall = time.perf_counter() - start
cpu = lambda usage: usage.ru_utime + usage.ru_stime
driver, workers = (cpu(resource.getrusage(who)) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({{"code": code, "wall": wall, "driver": driver, "workers": workers}}))
"""


def large_sweep(runs: int, workers: int, code: Path = REPO) -> tuple[float, float, float]:
    """One sweep of `runs` runs with the code of the checkout `code`, its driver in a fresh process: (wall s
    of the sweep from its `main`, the driver's CPU s with its start-up, its workers' CPU s)."""
    import json

    values = [round(0.1 + 0.0001 * i, 4) for i in range(max(1, runs // 10))]
    paths = [str(code), str(code / "core" / "src"), str(code / "plugins" / "ntn-tracker-file" / "src")]
    driver = DRIVER.format(paths=paths, sweep=LARGE.format(values=values), workers=workers)
    with tempfile.TemporaryDirectory() as directory:
        done = subprocess.run(
            [sys.executable, "-c", driver],
            cwd=directory,
            env=_env(TRACKER_BACKEND="file", PYTHONPATH=os.pathsep.join(paths)),
            capture_output=True,
            text=True,
            check=True,
        )
    measured = json.loads(done.stdout.splitlines()[-1])
    assert measured["code"] == 0, done.stderr
    return measured["wall"], measured["driver"], measured["workers"]


def per_run(threads: str, n_runs: int = 10) -> tuple[float, float]:
    """Median (wall s, CPU s) of one run trained in this process as a worker trains it (its records sent
    nowhere), TORCH_THREADS=`threads` ("" for the policy's default)."""
    sys.path.insert(0, str(REPO))
    from experiments.runner import Task
    from experiments.sweepfile import load
    from experiments.workers import compute

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "one.toml"
        path.write_text(LARGE.format(values=[0.1]))
        (configuration,) = load(path, tracker_backend="none").configurations
    os.environ["TORCH_THREADS"] = threads
    times = []
    for seed in range(n_runs):
        wall, cpu = time.perf_counter(), time.process_time()
        compute(Task(configuration, seed, f"floor{seed}"), lambda *_: None, lambda: False)
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    os.environ.pop("TORCH_THREADS")
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


BURNERS = {"python": [sys.executable, "-c", "while True: pass"], "yes": ["sh", "-c", "yes > /dev/null"]}


def threads_side_by_side(rounds: int = 3, burner: str = "python") -> list[list[str]]:
    """Per run: the policy (one thread) against torch's default (a thread per core), idle and busy (one
    `burner` per core: a Python loop, or `yes`, which enters the kernel at every write)."""
    cores = str(os.cpu_count() or 1)
    per_run("")  # warm: imports, the data set
    rows = []
    for load_name in ("idle", "busy"):
        burners = []
        if load_name == "busy":  # a CPU-bound process per core, as a laptop or a shared node has
            burners = [subprocess.Popen(BURNERS[burner], start_new_session=True) for _ in range(int(cores))]
        try:
            sides: dict[str, list[tuple[float, float]]] = {"": [], cores: []}
            for _ in range(rounds):  # interleaved
                for threads in sides:
                    sides[threads].append(per_run(threads, 5))
        finally:
            for process in burners:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        one, many = (min(sides[t]) for t in ("", cores))
        rows.append([load_name, f"{one[0] * 1e3:.0f}", f"{many[0] * 1e3:.0f}", f"{many[0] / one[0]:.2f}"])
    return rows


def report_large(runs: int, workers: int, burner: str, before: str | None, rounds: int) -> None:
    """The sweep of `runs` runs with this checkout's code and, with `before`, with the code of that git
    revision (checked out in a scratch worktree), in `rounds` interleaved rounds (medians)."""
    with tempfile.TemporaryDirectory() as scratch:
        codes = {"now": REPO}
        git = ["git", "-C", str(REPO), "worktree"]
        if before:
            codes = {"before": Path(scratch) / "before", **codes}
            subprocess.run([*git, "add", "-q", "--detach", str(codes["before"]), before], check=True)
        try:
            measured = {name: [] for name in codes}
            for _ in range(rounds):
                for name, code in codes.items():
                    measured[name].append(large_sweep(runs, workers, code))
        finally:
            if before:
                subprocess.run([*git, "remove", "--force", str(codes["before"])], check=True)
    _, floor_cpu = per_run("", 20)
    ideal = runs * floor_cpu / workers
    rows = []
    for name, sides in measured.items():
        wall, driver, trained = (statistics.median(side[i] for side in sides) for i in range(3))
        rows.append(
            [name, f"{wall:.1f}", f"{driver:.1f}", f"{trained:.1f}", f"{driver + trained:.1f}", f"{wall / ideal:.2f}"]
        )
    print(
        f"{runs} runs (bond 6, N_SAMPLES=500, 10 epochs, file backend), {workers} local workers, medians of "
        f"{rounds} interleaved rounds" + (f"; before = {before}" if before else "") + ":"
    )
    headers = ["code", "sweep wall s", "driver CPU s", "workers' CPU s", "all CPU s", "wall ÷ floor"]
    print(tabulate(rows, headers=headers))
    print(f"floor: one run in-process as a worker trains it, no tracker: {floor_cpu * 1e3:.0f} CPU ms")
    print(f"floor × runs ÷ workers: {ideal:.1f} s\n")
    headers = ["machine", "one run, ms: policy (1 thread)", f"torch default ({os.cpu_count()} threads)", "ratio"]
    print(f"busy: one `{burner}` per core beside it")
    print(tabulate(threads_side_by_side(burner=burner), headers=headers))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, help="one sweep of this many runs (the driver's cost, the floor, threads)")
    parser.add_argument("--workers", type=int, default=2, help="with --runs: local workers (default 2)")
    parser.add_argument("--burner", choices=sorted(BURNERS), default="python", help="with --runs: what keeps it busy")
    parser.add_argument("--before", help="with --runs: also the sweep with the code of this git revision, interleaved")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--bond-dims", default="4,6,8,10", help="the swept values (default: the README's loop)")
    args = parser.parse_args()
    if args.runs:
        report_large(args.runs, args.workers, args.burner, args.before, args.rounds)
        sys.exit(0)
    bond_dims = [int(b) for b in args.bond_dims.split(",")]
    loop, local, dask = medians(args.rounds, bond_dims)
    rows = [
        ["bash loop of run_mpo2.sh (README)", f"{loop:.1f}", "1.00"],
        ["run_sweep.sh, local, 2 workers", f"{local:.1f}", f"{loop / local:.2f}"],
        ["run_sweep.sh, dask LocalCluster, 2 workers", f"{dask:.1f}", f"{loop / dask:.2f}"],
    ]
    print(
        f"{len(bond_dims)} bond dimensions × 5 seeds, N_SAMPLES=500, file backend "
        f"(wall s of the whole command, median of {args.rounds}):"
    )
    print(tabulate(rows, headers=["how", "wall s", "speed-up over the loop"]))
    print(f"Dask LocalCluster ÷ local executor: {dask / local:.2f}\n")
    in_process, through_dask = dask_overhead()
    print(
        tabulate(
            [["trained in-process", f"{in_process * 1e3:.0f}"], ["submitted to Dask", f"{through_dask * 1e3:.0f}"]],
            headers=["one run (bond 6, 10 epochs, no tracker, 1 torch thread)", "ms"],
        )
    )
    print(f"Dask overhead per run: {(through_dask - in_process) * 1e3:.0f} ms\n")
    with tempfile.TemporaryDirectory() as d:
        print(tabulate(aim_delivery(Path(d)), headers=["into one aim server", "runs", "wall s", "runs/s"]))
