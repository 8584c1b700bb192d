"""run_*.sh's seeds: the whole command as a user runs it, before (a git revision, checked out in a scratch
worktree) and now, seeds one after another (WORKERS=1) and side by side (WORKERS=auto), at the defaults and
at all rows, bond 12; on this machine idle and busy (a CPU-bound process per core beside it).

    NTN_DATA_DIR=../shared/data python benchmarks/bench_seeds.py [--before 12a1afe] [--rounds 5] [--loads idle,busy]

Wall seconds, medians of interleaved rounds (file backend, 5 seeds). Targets (issue #29): all rows, bond 12,
5 seeds on 2 cores >= 1.6x faster than before; no slower at the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_sweep import BURNERS
from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"defaults": {}, "all rows, bond 12": {"N_SAMPLES": "all", "BOND_DIM": "12"}}


def command(code: Path, cwd: Path, settings: dict[str, str]) -> float:
    """One run of `bash run_mpo2.sh` from `code` (its own ntn and file plugin first on the path), in a fresh `cwd`."""
    paths = [code / "core" / "src", code / "plugins" / "ntn-tracker-file" / "src"]
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=os.pathsep.join(map(str, paths))) | settings
    env["NTN_DATA_DIR"] = os.path.abspath(env.get("NTN_DATA_DIR", "."))
    cwd.mkdir(parents=True)
    start = time.perf_counter()
    script = code / "experiments" / "run_mpo2.sh"
    subprocess.run(["bash", str(script)], cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


@contextlib.contextmanager
def busy(load: str):
    burners = []
    if load == "busy":
        burners = [subprocess.Popen(BURNERS["python"], start_new_session=True) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for process in burners:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="12a1afe", help="the revision to compare with (default: before #29)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians)")
    parser.add_argument("--loads", default="idle,busy", help="idle, busy or both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        before = Path(scratch) / "before"
        git = ["git", "-C", str(REPO), "worktree"]
        subprocess.run([*git, "add", "-q", "--detach", str(before), args.before], check=True)
        try:
            variants = {"before": (before, {}), "now, WORKERS=1": (REPO, {"WORKERS": "1"}), "now": (REPO, {})}
            rows = []
            for load in args.loads.split(","):
                times: dict[tuple[str, str], list[float]] = {}
                with busy(load):
                    for r in range(args.rounds):
                        for config, settings in CONFIGS.items():
                            for name, (code, extra) in variants.items():
                                cwd = Path(scratch) / f"{load}-{r}-{config}-{name}".replace(" ", "_")
                                times.setdefault((config, name), []).append(command(code, cwd, settings | extra))
                for config in CONFIGS:
                    wall = {name: statistics.median(times[config, name]) for name in variants}
                    ratio = wall["before"] / wall["now"]
                    rows.append([load, config, *(f"{wall[n]:.2f}" for n in variants), f"{ratio:.2f}"])
        finally:
            subprocess.run([*git, "remove", "--force", str(before)], check=True)
    print(f"run_mpo2.sh, 5 seeds, file backend: wall s, medians of {args.rounds} rounds; before = {args.before}")
    print(tabulate(rows, headers=["machine", "settings", *variants, "before ÷ now"]))


if __name__ == "__main__":
    main()
