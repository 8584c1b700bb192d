"""Training wall time of the default experiment under each tracking backend, as a ratio to none.

    NTN_DATA_DIR=../shared/data python benchmarks/bench_tracking.py [--rounds 3]

Runs `run_mpo2.sh`'s Python entry point (defaults: N_SAMPLES=500, 5 seeds × 10 epochs) in a fresh
process per measurement, configurations interleaved round by round; minimum and median reported, in
seconds. "train" is timed inside the process around the experiment, after torch is imported (its
import takes seconds and varies more than tracking costs). "run" is the user's view: from starting
the process to the end of training, Python start-up included. "tracking ms" is the median time the
training thread spends in tracking calls (selecting backends, starting runs, hooks, finalize), beyond
what `none` spends there, and its "÷ none" is (none's median train + that) / none's median train: the
part of the cost that this VM's ±20 % run-to-run noise cannot hide. Garbage-collection pauses count
by cause, not by where they fall: the pauses that fall inside tracking calls are taken out of those
calls and all the run's pauses are added, for every backend, so what remains beyond none is tracking's
own work plus the collections its allocations add (a collection of the objects torch's import made
costs ~4 ms, happens in every run, and lands in whatever code allocates at the time). Imports read
compiled bytecode, as from a pip install; one unmeasured round first compiles it and warms the caches.
"exit" is what the process then spends before it ends (the aim backend's bounded wait for delivery).
"command" is what a user waits for: `bash experiments/run_mpo2.sh` from start to end, run as a user
runs it (torch imported where the script imports it, so that what a backend starts before that can
overlap it), and "CPU" what all cores spent on it (/proc/stat, Linux; this benchmark's own process left
out) from its start until the uploaders it started have ended (a remote server's uploader outlives the
command by aim's clean-up): the process tree (the training process and its uploaders) and the aim
server, which here shares the machine's cores; "server" is the aim server's part of it. Medians, and
ratios to none.
Backends: none | file | aim (local) | aim (remote) | aim (remote, +200 ms per response, through a
delaying proxy) | aim (server down) | mlflow (a SQLite store, when the plugin is installed).
Targets: file ≤ 1.01; aim local, remote, remote +200 ms ≤ 1.05; server down ≤ 1.05 plus the bounded exit
(tracking time); whole command (issue #29): aim local and remote ≤ 1.25 × none.
"""

from __future__ import annotations

import argparse
import importlib.util
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
import gc, sys, time
import ntn.trainer  # torch's import (seconds, and noisy) is not training: done before the clock starts
import ntn.tracking, ntn.tracking.run as run
from experiments.train import main

spent = 0.0  # seconds the training thread spends in tracking calls (selection, runs, hooks), less GC pauses
pauses = 0.0  # seconds of all garbage-collection pauses
inside = False
paused = 0.0

def on_gc(phase, info):
    global pauses, spent, paused
    if phase == "start":
        paused = time.perf_counter()
        return
    pause = time.perf_counter() - paused
    pauses += pause
    if inside:  # a collection the whole process's allocations made due, which happened to fall in here
        spent -= pause

def timed(function):
    def call(*args, **kwargs):
        global spent, inside
        outer, inside = inside, True
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            if not outer:
                spent += time.perf_counter() - start
            inside = outer
    return call

ntn.tracking.validate = run.validate = timed(run.validate)
for name in ("__init__", "log_provenance", "log_hparams", "log_metrics", "log_summary", "log_artifact", "finalize"):
    setattr(run.TrackedRun, name, timed(getattr(run.TrackedRun, name)))
gc.callbacks.append(on_gc)
start = time.perf_counter()
code = main(["mpo2"])
print(f"TRAIN {time.perf_counter() - start:.4f} {time.time():.4f} {spent + pauses:.5f}", flush=True)
sys.exit(code)
"""


def busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def group_cpu(group: int) -> float:
    """CPU seconds the running processes of process group `group` have spent."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process has ended
            continue
        if int(fields[2]) == group:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def uploader_running() -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"ntn_tracker_aim.uploader" in cmdline.read_bytes():
                return True
        except OSError:  # the process has ended
            continue
    return False


def await_uploaders() -> None:
    """Until no aim uploader runs (one of a remote server ends on its own, after its command)."""
    deadline = time.monotonic() + 60
    while uploader_running() and time.monotonic() < deadline:
        time.sleep(0.02)


def measure(env: dict[str, str], cwd: Path, server: int) -> tuple[float, ...]:
    """(training span inside the process, process start to training end, exit wait, time in tracking
    calls, the script's wall time, the CPU all cores spent on it, of which the aim server's, whose
    process group is `server`) in seconds."""
    started = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=cwd, capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("TRAIN"))
    train, ended, tracking = (float(x) for x in line.split()[1:])
    run_s, exit_s = ended - started, time.time() - ended
    await_uploaders()
    before, own, served, started = busy_seconds(), time.process_time(), group_cpu(server), time.time()
    script = [str(REPO / "experiments" / "run_mpo2.sh")]
    subprocess.run(["bash", *script], env=env | {"PYTHON": sys.executable}, cwd=cwd, capture_output=True, check=True)
    whole = time.time() - started
    await_uploaders()
    cpu = busy_seconds() - before - (time.process_time() - own)
    return train, run_s, exit_s, tracking, whole, cpu, group_cpu(server) - served


def main() -> None:
    from authproxy import AuthProxy
    from conftest import AimServer, free_port

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="comma-separated backends to measure (default: all); none is always measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        server = AimServer(scratch / "server-repo")
        slow = AuthProxy(server.port, {}, delay_s=0.2)
        base = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),  # a checkout's sources
            TRACKER_DIR=str(scratch / "logs"),
            NTN_AIM_SPOOL=str(scratch / "spool"),
        )
        # imports read compiled bytecode, as from a pip install (which compiles it), never the source
        base.pop("PYTHONDONTWRITEBYTECODE", None)
        base["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
        base.setdefault("DATASET", "california_housing" if base.get("NTN_DATA_DIR") else "synthetic")
        configs = {
            "none": {"TRACKER_BACKEND": "none"},
            "file": {"TRACKER_BACKEND": "file"},
            "aim (local)": {"TRACKER_BACKEND": "aim", "AIM_REPO": str(scratch / "local-repo")},
            "aim (remote)": {"TRACKER_BACKEND": "aim", "AIM_REPO": server.url},
            "aim (remote, +200 ms)": {"TRACKER_BACKEND": "aim", "AIM_REPO": f"aim://127.0.0.1:{slow.port}"},
            "aim (server down)": {"TRACKER_BACKEND": "aim", "AIM_REPO": f"aim://127.0.0.1:{free_port()}"},
        }
        if importlib.util.find_spec("ntn_tracker_mlflow"):
            configs["mlflow (SQLite)"] = {
                "TRACKER_BACKEND": "mlflow",
                "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/m.db",
            }
        if args.only:
            configs = {name: extra for name, extra in configs.items() if name == "none" or name in args.only.split(",")}
        results: dict[str, list[tuple[float, ...]]] = {name: [] for name in configs}
        try:
            output = {"OUTPUT_FILE": str(scratch / "r.json")}
            for extra in configs.values():  # unmeasured: compiles the bytecode, warms the caches
                measure(base | extra | output, scratch, server.process.pid)
            for _ in range(args.rounds):
                for name, extra in configs.items():
                    results[name].append(measure(base | extra | output, scratch, server.process.pid))
        finally:
            slow.close()
            server.stop()
    none = results["none"]
    none_train = statistics.median(sample[0] for sample in none)
    rows = []
    for name, samples in results.items():
        train, whole, exit_s, tracking, command, cpu, served = (list(column) for column in zip(*samples))
        in_tracking = statistics.median(tracking) - statistics.median(sample[3] for sample in none)
        rows.append(
            [
                name,
                f"{min(train):.3f}",
                f"{min(train) / min(s[0] for s in none):.3f}",
                f"{statistics.median(train):.3f}",
                f"{statistics.median(train) / none_train:.3f}",
                f"{1000 * in_tracking:.1f}",
                f"{(none_train + in_tracking) / none_train:.3f}",
                f"{min(whole):.3f}",
                f"{min(whole) / min(s[1] for s in none):.3f}",
                f"{statistics.median(exit_s):.2f}",
                f"{statistics.median(command):.2f}",
                f"{statistics.median(command) / statistics.median(s[4] for s in none):.2f}",
                f"{statistics.median(cpu):.2f}",
                f"{statistics.median(cpu) / statistics.median(s[5] for s in none):.2f}",
                f"{statistics.median(served):.2f}",
            ]
        )
    print(f"default experiment ({base['DATASET']}, N_SAMPLES=500, 5 seeds × 10 epochs), {args.rounds} rounds")
    headers = ["backend", "train min", "÷ none", "train median", "÷ none", "tracking ms", "÷ none"]
    headers += ["run min", "÷ none", "exit median", "command", "÷ none", "CPU", "÷ none", "server"]
    print(tabulate(rows, headers=headers))


if __name__ == "__main__":
    main()
