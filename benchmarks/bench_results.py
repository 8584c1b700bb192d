"""`ntn-trackers summary` over 1,000 run files written by the file tracker (10 experiments × 100 seeds,
11 logged steps each), wall time of the whole command, Python start-up included.

    python benchmarks/bench_results.py

Target: <= 2 s.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ntn_tracker_file import FileTracker
from tabulate import tabulate

if __name__ == "__main__":
    cli = str(Path(sys.executable).parent / "ntn-trackers")
    with tempfile.TemporaryDirectory() as directory:
        for i in range(1000):
            tracker = FileTracker(f"exp{i % 10}_seed{i}", {"experiment": f"exp{i % 10}"}, directory=directory)
            for step in range(-1, 10):
                tracker.log_metrics({"loss": 1.0 / (step + 2), "r2": 0.5, "val_loss": 0.3, "val_r2": 0.6}, step)
            tracker.log_summary({"seed": i, "success": True, "loss": 0.1, "r2": 0.9, "test_r2": 0.8, "best_epoch": 9})
            tracker.finalize()
        rows = []
        for fmt in ("table", "json"):
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                subprocess.run([cli, "summary", "--dir", directory, "--format", fmt], check=True, capture_output=True)
                best = min(best, time.perf_counter() - start)
            rows.append([f"summary --format {fmt}", 1000, f"{best:.2f}"])
    print(tabulate(rows, headers=["command", "run files", "wall s (best of 3)"]))
