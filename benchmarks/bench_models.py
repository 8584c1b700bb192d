"""Every model on every data set, at the scripts' defaults: held-out figures and wall time.

    NTN_DATA_DIR=../shared/data python benchmarks/bench_models.py [--models mpo2,lmpo2,mmpo2] [--iris-splits 5]

Runs `bash experiments/run_<model>.sh` as a user would (5 seeds, file backend off, Python start-up
included in the wall time) for California housing at N_SAMPLES=500 and at all rows, iris and diabetes
(all rows), and prints one table row per (model, data set): seeds that succeeded, held-out test mean ±
std, and the wall time. Targets for LMPO2 (issue "LMPO2 trains"): default ≥ 4/5 seeds and R² ≥ 0.60;
all rows 5/5 and R² ≥ 0.70; iris accuracy ≥ 0.93 (LMPO2 and MMPO2); wall time ≤ 5 s and ≤ 15 s.
`--iris-splits N` adds iris on N train/validation/test splits: one split's 23 test flowers move the
accuracy in steps of 0.0435.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CASES = (
    ("california_housing", "500"),
    ("california_housing", "all"),
    ("iris", "all"),
    ("diabetes", "all"),
)


def run(model: str, dataset: str, n_samples: str, data_seed: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, PYTHON=sys.executable, DATASET=dataset, N_SAMPLES=n_samples, TRACKER_BACKEND="none")
        env["DATA_SEED"] = str(data_seed)
        if env.get("NTN_DATA_DIR"):  # the scripts run in a scratch directory
            env["NTN_DATA_DIR"] = os.path.abspath(env["NTN_DATA_DIR"])
        start = time.perf_counter()
        script = str(REPO / "experiments" / f"run_{model}.sh")
        done = subprocess.run(["bash", script], cwd=scratch, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode not in (0, 1):
            raise SystemExit(f"run_{model}.sh failed: {done.stderr.strip()}")
        results = json.loads((pathlib.Path(scratch) / f"results_{model}_experiment.json").read_text())
    quality = "r2" if "test_r2_mean" in results else "accuracy"
    mean, std = results[f"test_{quality}_mean"], results[f"test_{quality}_std"]
    shown = "n/a" if mean is None else f"{mean:.4f} ± {std:.4f}"
    return {
        "success": f"{results['n_success']}/{results['n_total']}",
        "held_out": f"{quality} {shown}",
        "mean": mean,
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mpo2,lmpo2,mmpo2")
    parser.add_argument(
        "--iris-splits", type=int, default=0, help="also iris on DATA_SEED 0..N-1: one 23-flower test split each"
    )
    args = parser.parse_args()
    models = args.models.split(",")
    print(f"| model | data set | N_SAMPLES | seeds ok | held-out test | wall s |\n|{' --- |' * 6}")
    for dataset, n_samples in CASES:
        for model in models:
            row = run(model, dataset, n_samples)
            cells = [model.upper(), dataset, n_samples, row["success"], row["held_out"], f"{row['wall']:.1f}"]
            print("| " + " | ".join(cells) + " |", flush=True)
    if args.iris_splits:  # one row per model: held-out accuracy on each split, then their mean
        seeds = range(args.iris_splits)
        header = ["model", *(f"DATA_SEED={d}" for d in seeds), "mean over splits"]
        print(f"\n| {' | '.join(header)} |\n|{' --- |' * len(header)}")
        for model in models:
            means = [run(model, "iris", "all", d)["mean"] for d in seeds]
            cells = [model.upper(), *(f"{m:.4f}" for m in means), f"{sum(means) / len(means):.4f}"]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
