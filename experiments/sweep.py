"""Sweeps: every (configuration, seed) of a sweep file (`sweepfile.py`), trained as run_*.sh trains it,
each a tracked run `{experiment}_seed{seed}`, on worker processes of this machine or on a Dask cluster.

    bash experiments/run_sweep.sh SWEEP.toml                                   # worker processes, one per core
    bash experiments/run_sweep.sh SWEEP.toml --executor dask --workers 4       # a Dask LocalCluster
    bash experiments/run_sweep.sh SWEEP.toml --executor dask --scheduler tcp://host:8786

A worker process imports torch, the data set and the tracker plugins once and trains run after run.
The results file (`results_sweep_{name}.json`, or --output) is the sweep's own record
(`sweep_results.py`), rewritten after every run: the same command run again (after a crash, Ctrl-C,
preemption) trains only the runs it does not hold as successful. A run trained twice carries the same
`config["run_id"]` (its name and the sweep's id), so trackers replace the earlier attempt, and never a run
of another sweep. Where the runs train is `executors.py`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ntn  # its trainer imports torch on first use: only a sweep asking for a GPU does, here
from ntn.errors import NtnError
from ntn.threads import training_threads
from ntn.tracking import hold, stop_on_signals, uninterrupted, validate

from experiments.dataset_loader import load_dataset
from experiments.executors import DaskExecutor, LocalExecutor
from experiments.names import identity, other_settings, recorded
from experiments.outputs import check_output, held, redact
from experiments.seed_run import failed_entry
from experiments.settings import SettingError, check_spelling, integer, run_name, usable_cores, within_cores
from experiments.sweep_results import Record, belongs_to, plot, table
from experiments.sweepfile import Configuration, Sweep, load
from experiments.train import command_of_this_process

EXECUTORS = ("local", "dask")
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}
SCHEDULER = re.compile(r"(tcp|tls|ucx)://[^\s/@]+:[0-9]{1,5}/?")  # what Dask's Client connects to (no credentials)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_sweep.sh",
        description="Train every configuration of a sweep file for each of its seeds, one tracked run each, "
        "in parallel. The tracker variables (TRACKER_BACKEND, TRACKER_DIR, AIM_REPO, ...) are read as by run_*.sh.",
        epilog="Exit codes: 0 every run succeeded; 1 some run failed (recorded as failed, the others went on; also "
        "when an earlier call recorded it) or did not run; 2 bad input, nothing trained; 130/143/129 stopped by "
        "SIGINT/SIGTERM/SIGHUP. Run the same command again to train only the runs the results file does not hold "
        "as successful.",
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
    parser.add_argument("--output", help="the results file, a .json [default results_sweep_{name}.json]")
    parser.add_argument(
        "--keep-failed", action="store_true", help="do not train again the runs the results file holds as failed"
    )
    return parser


@dataclasses.dataclass(frozen=True)
class Options:
    executor: str
    workers: int
    scheduler: str | None
    output: Path
    keep_failed: bool


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
        workers = integer(1)(raw) if raw else usable_cores()
        threads = training_threads()  # each run's, on any executor
    except SettingError as err:
        raise SettingError(f"{source}={raw!r} {err}") from None
    except ValueError as err:
        raise SettingError(str(err)) from None
    if executor == "local" or not scheduler:  # worker processes on this machine (a cluster's hosts have their own)
        within_cores(workers, source)
        within_cores(threads or 0, "TORCH_THREADS")
    if executor == "dask" and scheduler and not SCHEDULER.fullmatch(scheduler):
        source = "--scheduler" if args.scheduler else "DASK_SCHEDULER_ADDRESS"
        raise SettingError(f"{source}={redact(scheduler)!r} must be a Dask scheduler's address: tcp://host:port")
    output = Path(args.output or f"results_sweep_{sweep.name}.json")
    if output.suffix != ".json":
        raise SettingError(f"--output={str(output)!r} must be a .json file (the plot goes beside it, as .png)")
    return Options(executor, workers, scheduler if executor == "dask" else None, output, args.keep_failed)


# ---- the sweep ----------------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"run_sweep.sh: error: {redact(message)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; a signal ends it with one line (what is recorded stays) and 128 + its number."""
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


def preflight(sweep: Sweep) -> None:
    """Refuse now, in one line, what run_*.sh would refuse for every run: a device this machine does not
    have, a data set that cannot be loaded (a wrong NTN_DATA_DIR).

    :raises SettingError, DatasetError: naming the setting
    """
    for device in sorted({c.settings.device for c in sweep.configurations} - {"auto", "cpu"}):
        try:
            ntn.resolve_device(device)
        except ValueError as err:
            raise SettingError(f"device={device!r}: {err}") from None
    for data in dict.fromkeys(
        (c.settings.dataset, c.settings.n_samples, c.settings.data_seed, c.settings.preprocessing)
        for c in sweep.configurations
    ):
        load_dataset(*data)


def refuse_other_settings(sweep: Sweep, backends: list, tracker_dir: str) -> None:
    """Refuse a configuration whose name holds runs of other settings in TRACKER_DIR, whoever trained them
    (`experiments.names`: the rule run_*.sh keeps).

    :raises SettingError: naming the first such experiment and the settings that differ
    """
    found = recorded(backends, tracker_dir, [c.settings.experiment_name for c in sweep.configurations])
    for c in sweep.configurations:
        mixed = other_settings(
            found.get(c.settings.experiment_name, []), identity(c.model, dataclasses.asdict(c.settings))
        )
        if mixed:
            raise SettingError(
                f"experiment {c.settings.experiment_name!r} already holds runs trained with other settings: {mixed}; "
                f"name the sweep otherwise, or remove its runs from TRACKER_DIR {tracker_dir!r} to start afresh"
            )


def _main(argv: list[str] | None, state: dict[str, Any]) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_spelling(dict(os.environ))  # the tracker variables are read from the environment, as by run_*.sh
        sweep = load(args.sweep_file)
        opts = options(args, sweep)
        backend = sweep.configurations[0].settings.tracker_backend
        names = [run_name(c.settings, seed) for c in sweep.configurations for seed in sweep.seeds]
        backends = validate(backend, names)
        owns = lambda document: belongs_to(document, sweep.name)  # noqa: E731
        tracker_dir = sweep.configurations[0].settings.tracker_dir
        check_output(opts.output, "--output", owns, f"results of sweep {sweep.name!r}", tracker_dir)
        preflight(sweep)
        # the executor first: a scheduler that cannot be reached is bad input, refused before anything is made
        to_train = len(Record(sweep, opts.output).missing(not opts.keep_failed))  # read again once locked
        seen_dir = tracker_dir if "file" in {b.name for b in backends} else None  # every worker must see it
        executor = _executor(opts, min(opts.workers, to_train), backend, seen_dir) if to_train else None
        try:
            with hold(backends, names), held(opts.output, "--output"):  # the locks run_*.sh takes, for every run
                refuse_other_settings(sweep, backends, tracker_dir)
                record = Record(sweep, opts.output)
                state["record"] = record
                try:
                    return _run(sweep, opts, record, executor)
                finally:
                    with uninterrupted():
                        record.compact()  # the journal into the results file, also when interrupted
        finally:
            if executor is not None:
                executor.close()
    except (NtnError, OSError) as err:
        return _fail(str(err))


def _executor(opts: Options, workers: int, backend: str, tracker_dir: str | None):
    """Worker processes here, a LocalCluster of `workers`, or the Dask cluster at the scheduler's address;
    `tracker_dir`: the TRACKER_DIR every Dask worker must see (the file backend's), else None."""
    if opts.executor == "local":
        return LocalExecutor(workers, backend, command_of_this_process())
    return DaskExecutor(workers, opts.scheduler, backend, command_of_this_process(), tracker_dir)


def _run(sweep: Sweep, opts: Options, record: Record, executor) -> int:
    missing = record.missing(retry_failed=not opts.keep_failed)
    total = len(sweep.configurations) * len(sweep.seeds)
    not_run, lost = 0, ""
    if record.removed:
        print(
            f"sweep {sweep.name}: {len(record.removed)} configurations recorded earlier are no longer in the grid "
            f"(a value removed); their runs are kept under 'removed' in {opts.output}",
            file=sys.stderr,
        )
    if missing and executor is not None:
        where = f"{executor.workers} {opts.executor} workers"
        where = f"a Dask cluster at {redact(opts.scheduler)}" if opts.scheduler else where
        again = sum(seed in record.runs[c.settings.experiment_name] for c, seed in missing)
        print(
            f"sweep {sweep.name}: {len(missing)} of {total} runs to train ({record.n_recorded - again} already "
            f"recorded in {opts.output}" + (f"; {again} recorded as failed, trained again" if again else "")
            + f") on {where}",
            file=sys.stderr,
        )  # fmt: skip
        try:
            not_run, lost = _train_all(executor, missing, record)
        except KeyboardInterrupt as err:
            executor.stop(getattr(err, "signal_name", "SIGINT"))
            raise
    elif missing:  # another process changed the results file since it was read: train them next time
        not_run = len(missing)
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
    if record.n_failed:
        print(
            f"{record.n_failed} runs are recorded as failed (see their error in {opts.output}); run the same "
            "command again to train them again",
            file=sys.stderr,
        )
    if lost:
        print(
            f"lost the Dask scheduler at {redact(opts.scheduler)} ({lost}): {record.n_recorded} of {total} runs are "
            f"recorded in {opts.output}; run the same command again to train the other {total - record.n_recorded}",
            file=sys.stderr,
        )
    elif not_run:
        print(
            f"{not_run} runs did not run (a worker process ended); run the same command again to train them",
            file=sys.stderr,
        )
    return 1 if record.n_failed or not_run or lost else 0


def _train_all(executor, missing: list[tuple[Configuration, int]], record: Record) -> tuple[int, str]:
    """Submit every missing run, record each as it completes, then wait for the workers' trackers; how many
    runs did not run, and why the executor was lost ("" when it was not: a Dask scheduler gone mid-sweep)."""
    futures = {executor.submit(c.model, c, seed, record.run_id(c, seed)): (c, seed) for c, seed in missing}
    try:
        not_run = _record_all(executor, futures, record)
    except OSError as err:  # Dask's CommClosedError, a reconnection that timed out
        recorded = sum(seed in record.runs[c.settings.experiment_name] for c, seed in futures.values())
        return len(futures) - recorded, redact(f"{type(err).__name__}: {err}")
    return not_run, ""


def _record_all(executor, futures: dict[Any, tuple[Configuration, int]], record: Record) -> int:
    """Record each run of `futures` as it completes, then wait for the workers' trackers; how many runs did
    not run. The bar says what it waits for: workers starting, runs, trackers delivering."""
    not_run = failed = 0
    with _progress(len(futures)) as bar:
        for future in executor.as_completed(futures):
            configuration, seed = futures[future]
            try:
                entry = future.result()
            except (concurrent.futures.CancelledError, concurrent.futures.process.BrokenProcessPool):
                entry = None
            except Exception as err:  # the run raised outside training (a tracker's setup, a killed worker)
                entry = failed_entry(seed, configuration.quality, redact(f"{type(err).__name__}: {err}"))
            if entry is None:
                not_run += 1
                continue
            record.add(configuration, entry)
            failed += not entry["success"]
            bar.set_description("training")
            bar.set_postfix(failed=failed, refresh=False)
            bar.update(1)
        bar.set_description(f"trackers delivering {bar.n} runs")
        bar.refresh()
        executor.wait_for_trackers()
    return not_run


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A bar counting runs on a terminal, which says what it waits for; nothing otherwise."""
    if sys.stderr.isatty():
        from tqdm import tqdm  # only on a terminal (importing it takes ~45 ms)

        with tqdm(total=total, unit="run", desc="workers starting", file=sys.stderr) as bar:
            yield bar
    else:
        yield type("Silent", (), {"n": 0, "__getattr__": lambda self, name: lambda *a, **k: None})()


if __name__ == "__main__":
    sys.exit(main())
