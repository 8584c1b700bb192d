"""Sweeps: what a run costs in a large sweep; the README's bash loop against run_sweep.sh, the Dask path's
cost, and delivery into one aim server.

    NTN_DATA_DIR=../shared/data python benchmarks/bench_sweep.py --runs 1000 [--workers 2]
    NTN_DATA_DIR=../shared/data python benchmarks/bench_sweep.py [--rounds 3] [--bond-dims 4,6,8,10]

`--runs N`: one sweep of N runs (N/10 configurations × 10 seeds; bond 6, N_SAMPLES=500, 10 epochs, file
backend) with its driver in this process: its wall time, the driver's CPU against its workers', the
per-run floor (one run trained in-process, no tracker), and torch's thread policy against torch's
default threads per run, on this machine idle and busy (a CPU-bound process per core beside it).
Targets (issue #29): the N=1000 sweep in <= 2 min on 2 cores; driver CPU <= 5 % of the workers'.

Workload: 4 bond dimensions × 5 seeds of MPO2 on California housing at N_SAMPLES=500 (the README's loop),
file backend. Targets: run_sweep.sh local (2 workers) >= 3× faster than the loop; a Dask LocalCluster
(2 workers) <= 1.3× the local executor; Dask's per-run overhead over training in-process <= 50 ms;
delivery into one `aim server` >= 2 runs/s.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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


def dask_overhead(n_runs: int = 20) -> tuple[float, float]:
    """Mean s per run, one torch thread each: trained in this process, and submitted one at a time to the
    sweep's Dask executor with one worker (a LocalCluster, as `--executor dask` starts it)."""
    sys.path.insert(0, str(REPO))
    import torch

    from experiments.executors import DaskExecutor
    from experiments.sweepfile import load
    from experiments.train import train_run

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.toml"
        path.write_text(SWEEP.format(bond_dims=[6]))
        (configuration,) = load(path, tracker_backend="none").configurations
        train_run("mpo2", configuration.settings, 0, "warm")  # warm: imports, data set
        executor = DaskExecutor(1, None, "none", {})
        in_process, through_dask = [], []
        try:
            executor.submit("mpo2", configuration, 0, "warm").result()
            for _ in range(3):  # interleaved rounds: both sides see the same drift of this machine
                start = time.perf_counter()
                for seed in range(n_runs):
                    train_run("mpo2", configuration.settings, seed, f"p{seed}")
                in_process.append((time.perf_counter() - start) / n_runs)
                start = time.perf_counter()
                for seed in range(n_runs):
                    executor.submit("mpo2", configuration, seed, f"d{seed}").result()
                through_dask.append((time.perf_counter() - start) / n_runs)
        finally:
            executor.close()
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


def large_sweep(runs: int, workers: int) -> tuple[float, float, float]:
    """One sweep of `runs` runs, its driver in this process: (wall s, the driver's CPU s, its workers' CPU s)."""
    import resource

    sys.path.insert(0, str(REPO))
    from experiments.sweep import main

    values = [round(0.1 + 0.0001 * i, 4) for i in range(max(1, runs // 10))]
    with tempfile.TemporaryDirectory() as directory:
        cwd = os.getcwd()
        os.chdir(directory)
        os.environ |= {"TRACKER_BACKEND": "file", "NTN_DATA_DIR": _env()["NTN_DATA_DIR"]}
        Path("large.toml").write_text(LARGE.format(values=values))
        self, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its table of N/10 configurations
                assert main(["large.toml", "--workers", str(workers)]) == 0
        finally:
            os.chdir(cwd)
        wall = time.perf_counter() - start
    self_after, children_after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = lambda a, b: (b.ru_utime - a.ru_utime) + (b.ru_stime - a.ru_stime)  # noqa: E731
    return wall, cpu(self, self_after), cpu(children, children_after)


def per_run(threads: str, n_runs: int = 10) -> tuple[float, float]:
    """Median (wall s, CPU s) of one run trained in this process, no tracker, TORCH_THREADS=`threads`
    ("" for the policy's default)."""
    from experiments.sweepfile import load
    from experiments.train import train_run

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "one.toml"
        path.write_text(LARGE.format(values=[0.1]))
        (configuration,) = load(path, tracker_backend="none").configurations
    os.environ["TORCH_THREADS"] = threads
    times = []
    for seed in range(n_runs):
        wall, cpu = time.perf_counter(), time.process_time()
        train_run("mpo2", configuration.settings, seed, f"floor{seed}")
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


def report_large(runs: int, workers: int, burner: str) -> None:
    wall, driver, trained = large_sweep(runs, workers)
    _, floor_cpu = per_run("", 20)
    ideal = runs * floor_cpu / workers
    print(f"{runs} runs (bond 6, N_SAMPLES=500, 10 epochs, file backend), {workers} local workers:")
    print(
        tabulate(
            [
                ["whole sweep, wall s", f"{wall:.1f}"],
                ["driver CPU s", f"{driver:.1f}"],
                ["workers' CPU s", f"{trained:.1f}"],
                ["driver CPU ÷ workers' CPU", f"{driver / trained:.3f}"],
                ["per-run floor (one run in-process, no tracker), CPU ms", f"{floor_cpu * 1e3:.0f}"],
                ["floor × runs ÷ workers, s", f"{ideal:.1f}"],
                ["sweep wall ÷ that floor", f"{wall / ideal:.2f}"],
            ],
            headers=["what", "value"],
        )
    )
    print()
    headers = ["machine", "one run, ms: policy (1 thread)", f"torch default ({os.cpu_count()} threads)", "ratio"]
    print(f"busy: one `{burner}` per core beside it")
    print(tabulate(threads_side_by_side(burner=burner), headers=headers))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, help="one sweep of this many runs (the driver's cost, the floor, threads)")
    parser.add_argument("--workers", type=int, default=2, help="with --runs: local workers (default 2)")
    parser.add_argument("--burner", choices=sorted(BURNERS), default="python", help="with --runs: what keeps it busy")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three commands (medians)")
    parser.add_argument("--bond-dims", default="4,6,8,10", help="the swept values (default: the README's loop)")
    args = parser.parse_args()
    if args.runs:
        report_large(args.runs, args.workers, args.burner)
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
