"""What recording a run's provenance costs a script run: gathering it once per process (git, the package
list, the machine) in a fresh interpreter, and handing it to the file backend per run (the record and
its two attached files), against a run with an empty provenance, side by side.

    python benchmarks/bench_provenance.py [--rounds 10] [--runs 100]

Target (issue #27): <= 50 ms added to a script run (5 seeds).
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

from ntn.tracking import start_run
from ntn.tracking.provenance import Provenance, gather
from tabulate import tabulate

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
GATHER = (  # a script has imported ntn.tracking before its first run: the gathering itself is timed
    "import time; from ntn.tracking.provenance import gather; t = time.perf_counter(); "
    f"gather({str(EXPERIMENTS)!r}); print(time.perf_counter() - t)"
)


def cold_gather(rounds: int) -> list[float]:
    """Seconds to gather once, each in a new interpreter (nothing cached)."""
    return [
        float(subprocess.run([sys.executable, "-c", GATHER], capture_output=True, text=True, check=True).stdout)
        for _ in range(rounds)
    ]


def per_run(provenance: Provenance, runs: int) -> list[float]:
    """Seconds per run of the file backend (start, one summary, end), with `provenance`."""
    times = []
    with tempfile.TemporaryDirectory() as directory:
        os.environ["TRACKER_DIR"] = directory
        for i in range(runs):
            start = time.perf_counter()
            with start_run(f"bench_seed{i}", {"model": "MPO2"}, backend="file", provenance=provenance) as run:
                run.log_summary({"seed": i, "success": True})
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="fresh interpreters gathering (default 10)")
    parser.add_argument("--runs", type=int, default=100, help="runs per side, interleaved (default 100)")
    args = parser.parse_args()
    gathered = gather(EXPERIMENTS)
    cold = statistics.median(cold_gather(args.rounds))
    with_it, without = [], []
    for _ in range(5):  # interleaved rounds
        with_it += per_run(gathered, args.runs // 5)
        without += per_run(Provenance({}), args.runs // 5)
    extra = statistics.median(with_it) - statistics.median(without)
    dirty = gathered.record["code"].get("git_dirty")
    rows = [
        ["gather once per process (fresh interpreter, median)", f"{cold * 1e3:.1f}"],
        ["file backend run with provenance (median)", f"{statistics.median(with_it) * 1e3:.2f}"],
        ["file backend run without (median)", f"{statistics.median(without) * 1e3:.2f}"],
        ["added per run", f"{extra * 1e3:.2f}"],
        ["added to a 5-seed script run", f"{(cold + 5 * extra) * 1e3:.1f}"],
    ]
    print(f"working tree {'dirty' if dirty else 'clean'}; {len(gathered.files)} files attached per run")
    print(tabulate(rows, headers=["what", "ms"]))


if __name__ == "__main__":
    main()
