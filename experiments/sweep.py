"""Sweeps: every (configuration, seed) of a sweep file (`sweepfile.py`), trained as run_*.sh trains it,
each a tracked run `{experiment}_seed{seed}`, on worker processes of this machine or on a Dask cluster.

    bash experiments/run_sweep.sh SWEEP.toml                                   # worker processes, one per core
    bash experiments/run_sweep.sh SWEEP.toml --executor dask --workers 4       # a Dask LocalCluster
    bash experiments/run_sweep.sh SWEEP.toml --executor dask --scheduler tcp://host:8786

A worker process imports torch, the data set and the tracker plugins once and trains run after run.
The results file (`results_sweep_{name}.json`, or --output) is the sweep's own record, rewritten after
every run: the same command run again (after a crash, Ctrl-C, preemption) trains only the runs it does
not hold. A run trained twice — its worker died and Dask ran it again, or it was interrupted and the
sweep was run again — carries the same `config["run_id"]`, its run name, so trackers replace the earlier
attempt (the file backend keeps one file per run name; the aim backend one Aim run per run_id).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from experiments.settings import SettingError, integer
from experiments.sweepfile import Configuration, Sweep, SweepError
from experiments.train import _stats, failed_entry

EXECUTORS = ("local", "dask")
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}
SPLITS = ("train", "val", "test")
# a run's settings that do not change what it trains: a recorded run with other values still counts
NOT_TRAINING = ("seeds", "output_file", "verbose", "save_model", "tracker_backend", "tracker_dir", "aim_repo", "device")
SCHEDULER_TIMEOUT_S = 10
WORKER_WAIT_S = 60
TRACKER_WAIT_S = 120  # at the end, for the workers' trackers to deliver in the background


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_sweep.sh",
        description="Train every configuration of a sweep file for each of its seeds, one tracked run each, "
        "in parallel. The tracker variables (TRACKER_BACKEND, TRACKER_DIR, AIM_REPO, ...) are read as by run_*.sh.",
        epilog="Exit codes: 0 every run trained; 1 some run failed (recorded as failed, the others went on) or "
        "did not run; 2 bad input, nothing trained; 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP. Run the same "
        "command again to train only the runs the results file does not hold yet.",
    )
    parser.add_argument("sweep_file", help="the sweep's TOML file (see experiments/sweeps/)")
    parser.add_argument(
        "--executor",
        help="local (worker processes here) or dask [SWEEP_EXECUTOR, default local; dask when a scheduler is given]",
    )
    parser.add_argument(
        "--workers", help="worker processes here, or of a Dask LocalCluster [SWEEP_WORKERS, default: one per core]"
    )
    parser.add_argument("--scheduler", help="a running Dask scheduler, e.g. tcp://host:8786 [DASK_SCHEDULER_ADDRESS]")
    parser.add_argument("--output", help="the results file [default results_sweep_{name}.json]")
    return parser


@dataclasses.dataclass(frozen=True)
class Options:
    executor: str
    workers: int
    scheduler: str | None
    output: Path


def options(args: argparse.Namespace, sweep: Sweep) -> Options:
    """The executor's options from flags, else their variables, else defaults; SettingError names the bad one."""
    scheduler = args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    executor = args.executor or os.environ.get("SWEEP_EXECUTOR") or ("dask" if scheduler else "local")
    if executor not in EXECUTORS:
        source = "--executor" if args.executor else "SWEEP_EXECUTOR"
        raise SettingError(f"{source}={executor!r} must be one of: {', '.join(EXECUTORS)}")
    if executor == "local" and args.scheduler:
        raise SettingError(f"--scheduler={args.scheduler!r} needs --executor dask")
    raw, source = (args.workers, "--workers") if args.workers else (os.environ.get("SWEEP_WORKERS"), "SWEEP_WORKERS")
    try:
        workers = integer(1)(raw) if raw else (os.cpu_count() or 1)
    except SettingError as err:
        raise SettingError(f"{source}={raw!r} {err}") from None
    output = Path(args.output or f"results_sweep_{sweep.name}.json")
    return Options(executor, workers, scheduler if executor == "dask" else None, output)


# ---- in the worker processes ---------------------------------------------------------------------------

_stopping = {"signal": ""}  # a local worker's: the sweep is being stopped, start no other run
_every_worker: list[Any] = []  # a local worker's: the barrier that sends one tracker wait to each worker


def prepare_worker(backend: str, threads: int | None = None) -> str:
    """Import torch, the trainer and the tracker plugins once per worker process, and check the trackers'
    environment there (a cluster's workers have their own); returns why this worker cannot train, or ""."""
    import torch

    import experiments.train  # noqa: F401  (the trainer and the data sets, once)

    if threads:
        torch.set_num_threads(threads)
    from ntn.tracking import TrackerConfigError, TrackerSelectionError, TrackerValidationError, validate

    try:
        validate(backend, [])
    except (TrackerSelectionError, TrackerValidationError, TrackerConfigError) as err:
        return f"worker {os.uname().nodename}:{os.getpid()}: {err}"
    return ""


def _wait_for_trackers(timeout: float) -> bool:
    from ntn.tracking import pending

    return pending.wait(timeout)


def _start_local_worker(backend: str, threads: int, every_worker: Any) -> None:
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # between runs a signal only stops the worker's next run
        signal.signal(getattr(signal, name), _note_stop)
    _every_worker.append(every_worker)
    prepare_worker(backend, threads)


def _wait_for_trackers_locally(timeout: float) -> bool:
    """One worker's wait, held at the barrier until every worker has taken one, so that each waits once."""
    try:
        _every_worker[0].wait(timeout)
    except threading.BrokenBarrierError:
        return False
    return _wait_for_trackers(timeout)


def _note_stop(signum: int, frame: Any) -> None:
    _stopping["signal"] = signal.Signals(signum).name


def _train_local(model: str, settings: Any, seed: int) -> dict[str, Any] | None:
    """One run in a local worker; None when the sweep is being stopped (its run, if it had begun, is
    recorded as interrupted by its trackers, and the sweep trains it again next time)."""
    from ntn.tracking import stop_on_signals

    from experiments.train import train_run

    if _stopping["signal"]:
        return None
    previous = stop_on_signals()
    try:
        return train_run(model, settings, seed)
    except KeyboardInterrupt as err:
        _stopping["signal"] = getattr(err, "signal_name", "SIGINT")
        return None
    finally:
        for signum in previous:
            signal.signal(signum, _note_stop)


# ---- the executors ------------------------------------------------------------------------------------


class LocalExecutor:
    """Worker processes on this machine, each with an equal share of the cores for torch."""

    def __init__(self, workers: int, backend: str) -> None:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")  # never fork a process that may hold threads
        self.workers = workers
        self.pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_local_worker,
            initargs=(backend, threads, context.Barrier(workers)),
        )

    def submit(self, model: str, configuration: Configuration, seed: int):
        return self.pool.submit(_train_local, model, configuration.settings, seed)

    def as_completed(self, futures):
        return concurrent.futures.as_completed(futures)

    def wait_for_trackers(self) -> None:
        """Until every worker's trackers have delivered what they recorded (bounded), as on Dask. (Each would
        also wait as it exits, but for at most its trackers' exit bound, and the aim plugin then spreads what
        is left over several new uploaders per process: for a fast server, only more CPU spent starting them.)"""
        try:
            waits = [self.pool.submit(_wait_for_trackers_locally, TRACKER_WAIT_S) for _ in range(self.workers)]
            _report_late(sum(not w.result() for w in waits))
        except concurrent.futures.process.BrokenProcessPool:  # a worker ended: the others wait as they exit
            pass

    def stop(self) -> None:
        """Start no other run; let the runs in progress record that they were interrupted."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():
            with contextlib.suppress(OSError):
                os.kill(child.pid, signal.SIGINT)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """A Dask client: of a LocalCluster of `workers` single-threaded worker processes, or of the cluster
    whose scheduler is at `scheduler`. Dask runs a dead worker's runs again on another worker."""

    def __init__(self, workers: int, scheduler: str | None, backend: str) -> None:
        from distributed import Client, LocalCluster

        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout=f"{SCHEDULER_TIMEOUT_S}s")
            except (OSError, TimeoutError) as err:
                raise SettingError(f"cannot reach the Dask scheduler at {scheduler!r}: {err}") from None
        else:
            import dask

            # Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 for their workers, which makes glibc return
            # memory at every free: torch's many small tensors then cost a third more time per run
            # (docs/benchmarks.md). None unsets it, as Dask's configuration allows.
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                self.cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
                )
            self.client = Client(self.cluster)
        try:
            self.client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            self.close()
            raise SettingError(f"no Dask worker joined the scheduler at {scheduler!r} in {WORKER_WAIT_S} s") from None
        problems = [p for p in self.client.run(prepare_worker, backend).values() if p]
        if problems:
            self.close()
            raise SettingError(problems[0])

    def submit(self, model: str, configuration: Configuration, seed: int):
        from experiments.train import train_run

        key = f"{configuration.settings.experiment_name}_seed{seed}-{uuid.uuid4().hex[:8]}"
        return self.client.submit(train_run, model, configuration.settings, seed, key=key, pure=False)

    def as_completed(self, futures):
        from distributed import as_completed

        return as_completed(list(futures))

    def wait_for_trackers(self) -> None:
        """Until every worker's trackers have delivered what they recorded (bounded), so that the runs are
        in their trackers when the sweep says so, also on a cluster whose workers live on."""
        _report_late(sum(not done for done in self.client.run(_wait_for_trackers, TRACKER_WAIT_S).values()))

    def stop(self) -> None:
        self.client.cancel(list(self.client.futures.values()) if self.client.futures else [])

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _report_late(late: int) -> None:
    if late:
        print(
            f"trackers of {late} workers were still delivering after {TRACKER_WAIT_S} s; they go on "
            "there, or keep what is left for `ntn-trackers sync`",
            file=sys.stderr,
        )


# ---- the record ---------------------------------------------------------------------------------------


def _identity(configuration: Configuration) -> dict[str, Any]:
    settings = dataclasses.asdict(configuration.settings)
    return {"model": configuration.model} | {k: v for k, v in settings.items() if k not in NOT_TRAINING}


def quality_of(configuration: Configuration) -> str:
    from experiments.dataset_loader import REGRESSION

    return "r2" if configuration.settings.dataset in REGRESSION else "accuracy"


class Record:
    """The sweep's results file: every run recorded so far, per configuration, with its statistics."""

    def __init__(self, sweep: Sweep, path: Path) -> None:
        self.sweep, self.path = sweep, path
        self.runs: dict[str, dict[int, dict[str, Any]]] = {c.settings.experiment_name: {} for c in sweep.configurations}
        previous = self._previous()
        for configuration in sweep.configurations:
            kept = previous.get(configuration.settings.experiment_name)
            if kept is not None and kept.get("settings") == _identity(configuration):
                runs = self.runs[configuration.settings.experiment_name]
                runs.update((r["seed"], r) for r in kept.get("runs", []) if r.get("seed") in self.sweep.seeds)

    def _previous(self) -> dict[str, dict[str, Any]]:
        """The configurations recorded by an earlier call with this results file, by experiment name."""
        import json

        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise SettingError(f"{self.path}: cannot read the sweep's results file ({err}); move it away") from None
        if not isinstance(document, dict) or document.get("sweep") != self.sweep.name:
            raise SettingError(f"{self.path} holds no results of sweep {self.sweep.name!r}; name another --output")
        return {c.get("experiment"): c for c in document.get("configurations", []) if isinstance(c, dict)}

    def missing(self) -> list[tuple[Configuration, int]]:
        return [
            (c, seed)
            for c in self.sweep.configurations
            for seed in self.sweep.seeds
            if seed not in self.runs[c.settings.experiment_name]
        ]

    def add(self, configuration: Configuration, entry: dict[str, Any]) -> None:
        self.runs[configuration.settings.experiment_name][entry["seed"]] = entry

    @property
    def n_recorded(self) -> int:
        return sum(len(runs) for runs in self.runs.values())

    def summary(self, configuration: Configuration) -> dict[str, Any]:
        quality = quality_of(configuration)
        runs = [
            self.runs[configuration.settings.experiment_name][s]
            for s in sorted(self.runs[configuration.settings.experiment_name])
        ]
        ok = [r for r in runs if r["success"]]
        figures = {}
        for split in SPLITS:
            for metric in ("loss", quality):
                mean, std = _stats([r[f"{split}_{metric}"] for r in ok])
                figures |= {f"{split}_{metric}_mean": mean, f"{split}_{metric}_std": std}
        return {
            "experiment": configuration.settings.experiment_name,
            "model": configuration.model.upper(),
            "values": configuration.values,
            "metric": quality,
            "n_total": len(runs),
            "n_success": len(ok),
            **figures,
            "settings": _identity(configuration),
            "runs": runs,
        }

    def document(self) -> dict[str, Any]:
        configurations = [self.summary(c) for c in self.sweep.configurations]
        ranked = rank(configurations)
        best = ranked[0] if ranked and ranked[0][f"val_{ranked[0]['metric']}_mean"] is not None else None
        return {
            "sweep": self.sweep.name,
            "seeds": self.sweep.seeds,
            "grid": self.sweep.grid,
            "n_runs": len(self.sweep.configurations) * len(self.sweep.seeds),
            "n_recorded": self.n_recorded,
            "best": None if best is None else {k: v for k, v in best.items() if k not in ("settings", "runs")},
            "configurations": configurations,
        }

    def write(self) -> dict[str, Any]:
        from experiments.train import _write_json

        document = self.document()
        _write_json(self.path, document)
        return document


def rank(configurations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first by validation mean of the main metric (r2 or accuracy; never the test split)."""
    return sorted(
        configurations, key=lambda c: -np.inf if (v := c[f"val_{c['metric']}_mean"]) is None else v, reverse=True
    )


def table(document: dict[str, Any]) -> str:
    from tabulate import tabulate

    def shown(c: dict[str, Any], split: str) -> str:
        mean, std = c[f"{split}_{c['metric']}_mean"], c[f"{split}_{c['metric']}_std"]
        return "n/a" if mean is None else f"{mean:.4f} ± {std:.4f}"

    rows = [
        [c["experiment"], f"{c['n_success']}/{c['n_total']}", c["metric"]]
        + [shown(c, s) for s in ("val", "test", "train")]
        for c in rank(document["configurations"])
    ]
    return tabulate(rows, headers=["experiment (best first)", "seeds ok", "metric", "validation", "test", "train"])


def plot(document: dict[str, Any], path: Path) -> None:
    """The validation mean ± std (over seeds) of the main metric against each swept setting, one line per
    combination of the other settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = list(document["grid"])
    figure, axes = plt.subplots(1, len(axes_names), figsize=(5 * len(axes_names), 4), squeeze=False)
    configurations = document["configurations"]
    for ax, name in zip(axes[0], axes_names):
        values = document["grid"][name]
        others = sorted({tuple((k, str(v)) for k, v in c["values"].items() if k != name) for c in configurations})
        for other in others:
            points = [
                c for c in configurations if tuple((k, str(v)) for k, v in c["values"].items() if k != name) == other
            ]
            points = [p for p in points if p[f"val_{p['metric']}_mean"] is not None]
            if not points:
                continue
            x = [values.index(p["values"][name]) for p in points]
            metric = points[0]["metric"]
            ax.errorbar(
                x,
                [p[f"val_{metric}_mean"] for p in points],
                yerr=[p[f"val_{metric}_std"] for p in points],
                marker="o",
                capsize=3,
                label=", ".join(f"{k}={v}" for k, v in other) or None,
            )
        ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlabel(name)
        ax.set_ylabel("validation " + (configurations[0]["metric"] if configurations else ""))
        if len(others) > 1:
            ax.legend(fontsize="small")
    figure.suptitle(f"sweep {document['sweep']}: mean ± std over seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ---- the sweep ----------------------------------------------------------------------------------------


def _fail(message: str) -> int:
    from experiments.train import _redact

    print(f"run_sweep.sh: error: {_redact(message)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; a signal ends it with one line (what is recorded stays) and 128 + its number."""
    from ntn.tracking import stop_on_signals

    stop_on_signals()
    state: dict[str, Any] = {}
    try:
        return _main(argv, state)
    except KeyboardInterrupt as err:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        name = getattr(err, "signal_name", "SIGINT")
        record = state.get("record")
        if record is None:
            print(f"interrupted by {name} before any run started", file=sys.stderr)
        else:
            total = len(record.sweep.configurations) * len(record.sweep.seeds)
            print(
                f"interrupted by {name}: {record.n_recorded} of {total} runs recorded in {record.path}; "
                f"run the same command again to train the other {total - record.n_recorded}",
                file=sys.stderr,
            )
        return EXIT_CODES[name]


def _main(argv: list[str] | None, state: dict[str, Any]) -> int:
    from ntn.files import Held
    from ntn.tracking import TrackerConfigError, TrackerSelectionError, TrackerValidationError, validate

    from experiments.sweepfile import load
    from experiments.train import _hold_experiment, _writable_file

    args = build_parser().parse_args(argv)
    try:
        sweep = load(args.sweep_file)
        opts = options(args, sweep)
        backend = sweep.configurations[0].settings.tracker_backend
        names = [f"{c.settings.experiment_name}_seed{seed}" for c in sweep.configurations for seed in sweep.seeds]
        validate(backend, names)
        _writable_file(opts.output)
    except (SweepError, SettingError, TrackerSelectionError, TrackerValidationError, TrackerConfigError, OSError) as e:
        return _fail(str(e))
    try:
        with _hold_experiment(sweep.configurations[0].settings, opts.output, []):  # the results file only
            record = Record(sweep, opts.output)
            state["record"] = record
            return _run(sweep, opts, record, backend)
    except Held as err:
        return _fail(f"the results file {str(opts.output)!r} is being written by {err}; wait for that sweep")
    except SettingError as err:
        return _fail(str(err))


def _run(sweep: Sweep, opts: Options, record: Record, backend: str) -> int:
    missing = record.missing()
    total = len(sweep.configurations) * len(sweep.seeds)
    not_run = failed = 0
    if missing:
        workers = min(opts.workers, len(missing))  # of a LocalCluster or local; a cluster's are its own
        executor = (
            LocalExecutor(workers, backend)
            if opts.executor == "local"
            else DaskExecutor(workers, opts.scheduler, backend)
        )
        where = f"a Dask cluster at {opts.scheduler}" if opts.scheduler else f"{workers} {opts.executor} workers"
        print(
            f"sweep {sweep.name}: {len(missing)} of {total} runs to train ({record.n_recorded} already recorded "
            f"in {opts.output}) on {where}",
            file=sys.stderr,
        )
        try:
            failed, not_run = _train_all(executor, missing, record)
            executor.wait_for_trackers()
        except KeyboardInterrupt:
            executor.stop()
            raise
        finally:
            executor.close()
    document = record.write()
    print(table(document))
    with contextlib.suppress(ImportError):
        plot(document, opts.output.with_suffix(".png"))
    best = document["best"]
    if best is not None:
        q = best["metric"]
        print(
            f"best on validation: {best['experiment']} (validation {q} {best[f'val_{q}_mean']:.4f}; "
            f"held-out test {q} {best[f'test_{q}_mean']:.4f} ± {best[f'test_{q}_std']:.4f}) -> {opts.output}"
        )
    if not_run:
        print(
            f"{not_run} runs did not run (a worker process ended); run the same command again to train them",
            file=sys.stderr,
        )
    return 1 if failed or not_run else 0


def _train_all(executor, missing: list[tuple[Configuration, int]], record: Record) -> tuple[int, int]:
    """Submit every missing run, record each as it completes; (failed, did not run)."""
    futures = {executor.submit(c.model, c, seed): (c, seed) for c, seed in missing}
    failed = not_run = 0
    with _progress(len(futures)) as bar:
        for future in executor.as_completed(futures):
            configuration, seed = futures[future]
            try:
                entry = future.result()
            except (concurrent.futures.CancelledError, concurrent.futures.process.BrokenProcessPool):
                entry = None
            except Exception as err:  # the run raised outside training (a tracker's setup, a killed worker)
                entry = failed_entry(seed, quality_of(configuration), f"{type(err).__name__}: {err}")
            if entry is None:
                not_run += 1
                continue
            failed += entry["test_loss"] is None  # training raised, as run_*.sh counts it
            record.add(configuration, entry)
            record.write()
            bar.update(1)
    return failed, not_run


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A bar counting runs on a terminal; nothing otherwise."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, unit="run", file=sys.stderr) as bar:
            yield bar
    else:
        yield type("Silent", (), {"update": lambda self, n: None})()


if __name__ == "__main__":
    sys.exit(main())
