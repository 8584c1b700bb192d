"""Cost of one `run.log_metrics` call through the tracking core with 0, 1 and 3 no-op trackers.

    python benchmarks/bench_tracking_dispatch.py

Target: <= 20 µs per call with 3 trackers.
"""

from __future__ import annotations

import time

from ntn.tracking import Backend, BaseTracker
from ntn.tracking.run import TrackedRun
from tabulate import tabulate

CALLS = 20_000
METRICS = {"loss": 0.27, "r2": 0.80, "val_loss": 0.3, "val_r2": 0.78, "reg_loss": 0.86, "jitter": 0.05}


class Noop(BaseTracker):
    pass


def per_call(n_trackers: int) -> float:
    backends = [Backend(f"noop{i}", Noop) for i in range(n_trackers)]
    run = TrackedRun("bench_seed0", {"model": "MPO2"}, backends)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for step in range(CALLS):
            run.log_metrics(METRICS, step)
        best = min(best, (time.perf_counter() - start) / CALLS)
    run.finalize()
    return best


if __name__ == "__main__":
    rows = [[n, f"{per_call(n) * 1e6:.2f}"] for n in (0, 1, 3)]
    print(tabulate(rows, headers=["no-op trackers", "µs per log_metrics (best of 5)"]))
