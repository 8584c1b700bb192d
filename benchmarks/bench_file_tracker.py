"""Cost of `log_metrics` in the file backend as a run grows: the mean cost of the calls that take the
run from 1 to 10, 100 and 1,000 logged steps, and the total for 1,000 steps.

    python benchmarks/bench_file_tracker.py

Target: a 1,000-step run costs < 1 s of tracking in total.
"""

from __future__ import annotations

import tempfile
import time

from ntn_tracker_file import FileTracker
from tabulate import tabulate

METRICS = {
    "loss": 0.27,
    "r2": 0.80,
    "val_loss": 0.3,
    "val_r2": 0.78,
    "reg_loss": 0.86,
    "jitter": 0.05,
    "weight_norm_sq": 12.1,
}

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        tracker = FileTracker("bench_seed0", {"model": "MPO2", "bond_dim": 6}, directory=directory)
        checkpoints, rows, total = (10, 100, 1000), [], 0.0
        for step in range(1000):
            start = time.perf_counter()
            tracker.log_metrics(METRICS, step)
            total += time.perf_counter() - start
            if step + 1 in checkpoints:
                rows.append([step + 1, f"{total / (step + 1) * 1e6:.0f}", f"{total:.3f}"])
        last = time.perf_counter()
        tracker.log_metrics(METRICS, 1000)
        rows.append(["call no. 1001 alone", f"{(time.perf_counter() - last) * 1e6:.0f}", ""])
        tracker.finalize()
    print(tabulate(rows, headers=["steps logged", "mean µs per call", "total s"]))
