"""A grid against an Optuna search over the same space (issue #38), each a `run_sweep.sh` as a user runs it.

    NTN_DATA_DIR=../shared/data python benchmarks/bench_search.py [--trials 16] [--workers 2]
    NTN_DATA_DIR=../shared/data python benchmarks/bench_search.py --all-rows --trials 24

Workload: MPO2 on California housing, N_SAMPLES=2000, 20 epochs, seeds 0 and 1, file backend. The grid:
bond_dim × jitter_start × l = 4 × 4 × 3 = 48 configurations, 96 runs. The search: TPE with median pruning
over the same ranges (bond_dim 2..8, jitter_start 0.001..1 on a log scale, l in 3, 4, 5), `--trials` trials.
Printed side by side, from one run of this script: runs trained (pruned ones among them), the CPU seconds of
the sweep's processes (the driver and its workers: `getrusage(RUSAGE_CHILDREN)`), wall time, the best
validation R² and that configuration's held-out test R².
Target: the search reaches the grid's best validation R² within 0.005 in <= 25 % of the grid's CPU.

`--all-rows`: only the search, on every row of the data set (N_SAMPLES=all); its best held-out R².
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
COMMON = """
model = "mpo2"
seeds = [0, 1]
[settings]
dataset = "california_housing"
n_samples = {n_samples}
n_epochs = 20
"""
GRID = """
name = "grid"
{common}
[grid]
bond_dim = [2, 4, 6, 8]
jitter_start = [0.001, 0.01, 0.1, 1.0]
l = [3, 4, 5]
"""
SEARCH = """
name = "search"
{common}
[search]
sampler = "tpe"
trials = {trials}
objective = "val_r2"
prune = "median"
[search.space]
bond_dim = {{low = 2, high = 8}}
jitter_start = {{low = 0.001, high = 1.0, log = true}}
l = [3, 4, 5]
"""
TOLERANCE = 0.005  # of validation R²: "reaches the grid's best"
CPU_SHARE = 0.25


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sweep(text: str, directory: Path, workers: int) -> dict:
    """Run one sweep file with run_sweep.sh in `directory`; its results document, CPU and wall seconds."""
    path = directory / "sweep.toml"
    path.write_text(text, encoding="utf-8")
    env = dict(os.environ, PYTHON=sys.executable, TRACKER_BACKEND="file")
    if env.get("NTN_DATA_DIR"):
        env["NTN_DATA_DIR"] = os.path.abspath(env["NTN_DATA_DIR"])
    cpu, start = _cpu(), time.perf_counter()
    done = subprocess.run(
        ["bash", str(REPO / "experiments" / "run_sweep.sh"), str(path), "--workers", str(workers)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
    )
    wall, cpu = time.perf_counter() - start, _cpu() - cpu
    if done.returncode not in (0, 1):  # 1: some run failed (a collapsed configuration), recorded as such
        raise SystemExit(f"run_sweep.sh failed ({done.returncode}):\n{done.stderr}")
    (results,) = directory.glob("results_sweep_*.json")
    return {"document": json.loads(results.read_text()), "cpu": cpu, "wall": wall, "stdout": done.stdout}


def row(name: str, measured: dict) -> list:
    document, best = measured["document"], measured["document"]["best"]
    runs = f"{document['n_recorded']}" + (f" ({document['n_pruned']} pruned)" if document.get("n_pruned") else "")
    what = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["values"].items())
    return [
        name,
        runs,
        f"{measured['cpu']:.0f}",
        f"{measured['wall']:.0f}",
        f"{best['val_r2_mean']:.4f} ± {best['val_r2_std']:.4f}",
        f"{best['test_r2_mean']:.4f} ± {best['test_r2_std']:.4f}",
        what,
    ]


HEADERS = ["study", "runs", "CPU-s", "wall-s", "best val R²", "its test R²", "configuration"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="the search's trials [16]")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of each sweep [2]")
    parser.add_argument("--all-rows", action="store_true", help="only the search, on every row (N_SAMPLES=all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if args.all_rows:
            common = COMMON.format(n_samples='"all"')
            (Path(scratch) / "search").mkdir()
            search = sweep(SEARCH.format(common=common, trials=args.trials), Path(scratch) / "search", args.workers)
            print(search["stdout"])
            print(tabulate([row(f"TPE + median, {args.trials} trials, all rows", search)], headers=HEADERS))
            return
        common = COMMON.format(n_samples=2000)
        measured = {}
        for name, text in (
            ("grid", GRID.format(common=common)),
            ("search", SEARCH.format(common=common, trials=args.trials)),
        ):
            (Path(scratch) / name).mkdir()
            measured[name] = sweep(text, Path(scratch) / name, args.workers)
    grid, search = measured["grid"], measured["search"]
    print(
        tabulate(
            [row("grid 4 × 4 × 3", grid), row(f"TPE + median pruning, {args.trials} trials", search)],
            headers=HEADERS,
        )
    )
    gap = grid["document"]["best"]["val_r2_mean"] - search["document"]["best"]["val_r2_mean"]
    share = search["cpu"] / grid["cpu"]
    reached = gap <= TOLERANCE and share <= CPU_SHARE
    print(
        f"search: best val R² {gap:+.4f} below the grid's (target <= {TOLERANCE}), CPU {share:.0%} of the grid's "
        f"(target <= {CPU_SHARE:.0%}): {'reached' if reached else 'NOT reached'}"
    )
    print(search["stdout"].split("\n\n")[-1])


if __name__ == "__main__":
    main()
