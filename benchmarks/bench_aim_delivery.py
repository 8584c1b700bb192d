"""Delivery alone into one `aim server` (no training beside it): N finished runs of 11 steps, journaled
first, then delivered by 1, 2 or 4 uploaders; runs/s, and the CPU seconds per run of the server and of
the uploaders (with their start-up: importing aim).

    python benchmarks/bench_aim_delivery.py [N]        (default 20; each row in its own process)

This is the ceiling of `TRACKER_BACKEND=aim` to one server on this machine: aim's client (the uploaders)
and its server spend ~0.4-0.5 CPU seconds per run between them, one uploader waits on its round trips,
and more than two only add CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]


def _cpu(pid: int) -> float:
    import psutil

    try:
        process = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])
    except psutil.Error:
        return 0.0


def deliver(n_runs: int, uploaders: int) -> tuple[float, float, float]:
    """(seconds to deliver, server CPU seconds, uploaders' CPU seconds with their start-up) for n_runs
    journaled runs; run in a fresh process."""
    sys.path.insert(0, str(REPO / "plugins/ntn-tracker-aim/tests"))
    from conftest import AimServer

    with tempfile.TemporaryDirectory() as directory:
        os.chdir(directory)
        server = AimServer(Path(directory) / "server")
        try:
            os.environ |= {"AIM_REPO": server.url, "NTN_AIM_DELIVERY_INTERVAL": "1000"}
            from ntn_tracker_aim import AimTracker, flush, uploads

            uploads.UPLOADS._as_they_go = lambda key: False  # every run journaled first, as over a slow link

            for i in range(n_runs):
                tracker = AimTracker(f"bench_seed{i}", {"experiment": "bench"})
                tracker.log_hparams({"bond_dim": 6, "l": 3})
                for step in range(-1, 10):
                    metrics = {"loss": 0.1, "r2": 0.9, "val_loss": 0.2, "val_r2": 0.8, "reg_loss": 0.3, "jitter": 0.1}
                    tracker.log_metrics(metrics, step)
                tracker.log_summary({"seed": i, "loss": 0.1, "success": True, "status": "finished"})
                tracker.finalize()
            os.environ["NTN_AIM_DELIVERY_INTERVAL"] = "0"  # the uploaders started now deliver at once
            before = _cpu(server.process.pid)
            start = time.perf_counter()
            uploads.UPLOADS.hand_over(uploaders)
            pids = [u.pid for u in uploads.UPLOADS.all_uploaders()]
            assert flush(600)
            seconds = time.perf_counter() - start
            return seconds, _cpu(server.process.pid) - before, sum(_cpu(pid) for pid in pids)
        finally:
            server.stop()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--row":
        print(*deliver(int(sys.argv[2]), int(sys.argv[3])))
        sys.exit(0)
    n_runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    rows = []
    for uploaders in (1, 2, 4):
        out = subprocess.run(
            [sys.executable, __file__, "--row", str(n_runs), str(uploaders)], capture_output=True, text=True, check=True
        ).stdout.split()
        seconds, server_cpu, uploader_cpu = (float(x) for x in out[-3:])
        rows.append([uploaders, n_runs, f"{seconds:.1f}", f"{n_runs / seconds:.2f}"])
        rows[-1] += [f"{server_cpu / n_runs:.3f}", f"{uploader_cpu / n_runs:.3f}"]
    headers = ["uploaders", "runs", "wall s", "runs/s", "server CPU s/run", "uploaders' CPU s/run"]
    print(tabulate(rows, headers=headers))
