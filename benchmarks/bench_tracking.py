"""Training wall time of the default experiment under each tracking backend, as a ratio to none.

    NTN_DATA_DIR=../shared/data python benchmarks/bench_tracking.py [--rounds 3]

Runs `run_mpo2.sh`'s Python entry point (defaults: N_SAMPLES=500, 5 seeds × 10 epochs) in a fresh
process per measurement, configurations interleaved round by round; minimum and median reported, in
seconds. "train" is timed inside the process around the experiment, after torch is imported (its
import takes seconds and varies more than tracking costs). "run" is the user's view: from starting
the process to the end of training, Python start-up included. "exit" is what the process then spends
before it ends (the aim backend's bounded wait for delivery). Backends: none | file | aim (local) | aim (remote)
| aim (remote, +200 ms per response, through a delaying proxy) | aim (server down).
Targets: file ≤ 1.01; aim local, remote, remote +200 ms ≤ 1.05; server down ≤ 1.05 plus the bounded exit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins" / "ntn-tracker-aim" / "tests"))  # the real aim server + proxy helpers

CHILD = """
import sys, time
import ntn.trainer  # torch's import (seconds, and noisy) is not training: done before the clock starts
from experiments.train import main
start = time.perf_counter()
code = main(["mpo2"])
print(f"TRAIN {time.perf_counter() - start:.4f} {time.time():.4f}", flush=True)
sys.exit(code)
"""


def measure(env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """(training span inside the process, process start to training end, exit wait) in seconds."""
    started = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=cwd, capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("TRAIN"))
    train, ended = float(line.split()[1]), float(line.split()[2])
    return train, ended - started, time.time() - ended


def main() -> None:
    from authproxy import AuthProxy
    from conftest import AimServer, free_port

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        server = AimServer(scratch / "server-repo")
        slow = AuthProxy(server.port, {}, delay_s=0.2)
        base = dict(
            os.environ, PYTHONPATH=str(REPO), TRACKER_DIR=str(scratch / "logs"), NTN_AIM_SPOOL=str(scratch / "spool")
        )
        base.setdefault("DATASET", "california_housing" if base.get("NTN_DATA_DIR") else "synthetic")
        configs = {
            "none": {"TRACKER_BACKEND": "none"},
            "file": {"TRACKER_BACKEND": "file"},
            "aim (local)": {"TRACKER_BACKEND": "aim", "AIM_REPO": str(scratch / "local-repo")},
            "aim (remote)": {"TRACKER_BACKEND": "aim", "AIM_REPO": server.url},
            "aim (remote, +200 ms)": {"TRACKER_BACKEND": "aim", "AIM_REPO": f"aim://127.0.0.1:{slow.port}"},
            "aim (server down)": {"TRACKER_BACKEND": "aim", "AIM_REPO": f"aim://127.0.0.1:{free_port()}"},
        }
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in configs}
        try:
            for _ in range(args.rounds):
                for name, extra in configs.items():
                    results[name].append(measure(base | extra | {"OUTPUT_FILE": str(scratch / "r.json")}, scratch))
        finally:
            slow.close()
            server.stop()
    rows = []
    for name, samples in results.items():
        row = [name]
        for column in (0, 1):  # the training span, then the whole run up to the end of training
            values = [sample[column] for sample in samples]
            none = [sample[column] for sample in results["none"]]
            row += [f"{min(values):.3f}", f"{min(values) / min(none):.3f}"]
            row += [f"{statistics.median(values):.3f}", f"{statistics.median(values) / statistics.median(none):.3f}"]
        rows.append([*row, f"{statistics.median(sample[2] for sample in samples):.2f}"])
    print(f"default experiment ({base['DATASET']}, N_SAMPLES=500, 5 seeds × 10 epochs), {args.rounds} rounds")
    headers = ["backend", "train min", "÷ none", "train median", "÷ none"]
    headers += ["run min", "÷ none", "run median", "÷ none", "exit median"]
    print(tabulate(rows, headers=headers))


if __name__ == "__main__":
    main()
