"""Sweeps: every (configuration, seed) of a sweep file (`sweepfile.py`), trained as run_*.sh trains it,
each a tracked run `{experiment}_seed{seed}`, on worker processes of this machine or on a Dask cluster.

    bash experiments/run_sweep.sh SWEEP.toml                                   # worker processes, one per core
    bash experiments/run_sweep.sh SWEEP.toml --executor dask --workers 4       # a Dask LocalCluster
    bash experiments/run_sweep.sh SWEEP.toml --executor dask --scheduler tcp://host:8786

A grid is a study of the one runner (`experiments.runner`): workers (forked from this process, or a Dask
cluster's) train run after run, and this process records every run, as run_*.sh records its seeds. The
results file (`results_sweep_{name}.json`, or --output) is the sweep's own record (`sweep_results.py`),
journaled after every run: the same command run again (after a crash, Ctrl-C, preemption) trains only the
runs it does not hold as successful. A run trained twice carries the same `config["run_id"]` (its name
and the sweep's id), so trackers replace the earlier attempt, and never a run of another sweep.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import ntn  # its trainer imports torch on first use: only a sweep asking for a GPU does, here
from ntn.errors import NtnError
from ntn.threads import training_threads
from ntn.tracking import closing_line, hold, prepare, stop_on_signals, uninterrupted, validate

from experiments.dask_pool import DaskPool, WorkersLost
from experiments.failures import fails_again, reasons
from experiments.names import identity, other_settings, recorded
from experiments.outputs import check_output, held, redact
from experiments.runner import EXIT_CODES, Progress, Runner, Task
from experiments.seed_run import command_of_this_process
from experiments.settings import SettingError, check_spelling, integer, run_name, usable_cores, within_cores
from experiments.sweep_results import Record, belongs_to, plot, status_of, table
from experiments.sweepfile import Configuration, Sweep, load
from experiments.workers import LocalPool, dataset

EXECUTORS = ("local", "dask")
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
        "--keep-failed",
        action="store_true",
        help="do not train again the runs the results file holds as failed (a search: nor ask their trials again)",
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
        elif record.sweep.search is not None:
            print(
                f"interrupted by {name}: {record.n_recorded} runs recorded in {record.path}, the study "
                "beside it; run the same command again to go on with the search",
                file=sys.stderr,
            )
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
    for device in sorted({c.settings.device for c in sweep.checked} - {"auto", "cpu"}):
        try:
            ntn.resolve_device(device)
        except ValueError as err:
            raise SettingError(f"device={device!r}: {err}") from None
    for data in dict.fromkeys(
        (c.settings.dataset, c.settings.n_samples, c.settings.data_seed, c.settings.preprocessing)
        for c in sweep.checked
    ):
        dataset(*data)  # kept: the driver records the runs' data, and forked workers inherit it


def refuse_other_settings(configurations: list[Configuration], backends: list, tracker_dir: str) -> None:
    """Refuse a configuration whose name holds runs of other settings in TRACKER_DIR, whoever trained them
    (`experiments.names`: the rule run_*.sh keeps).

    :raises SettingError: naming the first such experiment and the settings that differ
    """
    found = recorded(backends, tracker_dir, [c.settings.experiment_name for c in configurations])
    for c in configurations:
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
        backend = sweep.checked[0].settings.tracker_backend
        # the runs held while it trains (a search's: none, its trials' names are decided as it goes; its
        # results file and study are held)
        names = [run_name(c.settings, seed) for c in sweep.configurations for seed in sweep.seeds]
        backends = validate(backend, names)
        owns = lambda document: belongs_to(document, sweep.name)  # noqa: E731
        tracker_dir = sweep.checked[0].settings.tracker_dir
        check_output(opts.output, "--output", owns, f"results of sweep {sweep.name!r}", tracker_dir)
        preflight(sweep)
        # the workers first: a scheduler that cannot be reached is bad input, refused before anything is made
        # (and forked workers hold none of the locks)
        if sweep.search is None:
            to_train = len(Record(sweep, opts.output).missing(not opts.keep_failed))  # read again once locked
        else:
            try:
                from experiments import search  # Optuna (the search extra), imported by a search only
            except ModuleNotFoundError as err:
                raise SettingError(
                    f"{args.sweep_file}: a [search] needs Optuna, and {err.name} is not installed: "
                    "pip install -c constraints.txt './core[search]'"
                ) from None
            to_train = search.runs_left(sweep, opts.output, not opts.keep_failed)
        pool = _pool(opts, sweep, min(opts.workers, to_train)) if to_train else None
        prepare(backends)  # e.g. aim's uploader starts: this process records every run
        try:
            with hold(backends, names), held(opts.output, "--output"):  # the locks run_*.sh takes, for every run
                if sweep.search is not None:
                    study = search.SearchStudy(sweep, opts.output, retry_failed=not opts.keep_failed)
                    refuse_other_settings(study.record.configurations, backends, tracker_dir)
                    record = state["record"] = study.record
                    try:
                        return _run_search(sweep, opts, study, pool, backends)
                    finally:
                        with uninterrupted():
                            record.compact()
                refuse_other_settings(sweep.configurations, backends, tracker_dir)
                record = Record(sweep, opts.output)
                state["record"] = record
                try:
                    return _run(sweep, opts, record, pool, backends)
                finally:
                    with uninterrupted():
                        record.compact()  # the journal into the results file, also when interrupted
        finally:
            if pool is not None:
                pool.close()
    except (NtnError, OSError) as err:
        return _fail(str(err))


def _pool(opts: Options, sweep: Sweep, workers: int):
    """`workers` processes forked here (spawned when a run trains on a GPU), a LocalCluster of `workers`, or
    the Dask cluster at the scheduler's address."""
    if opts.executor == "local":
        on_cpu = all(str(ntn.resolve_device(c.settings.device)) == "cpu" for c in sweep.checked)
        return LocalPool(workers, fork=on_cpu)
    return DaskPool(workers, opts.scheduler)


class _Grid:
    """A grid's study: the runs its results file lacks (or holds as failed), each recorded there as it ends."""

    def __init__(self, record: Record, retry_failed: bool) -> None:
        self.record = record
        self.tasks = [Task(c, seed, record.run_id(c, seed)) for c, seed in record.missing(retry_failed)]
        self.started = self.ended = 0

    def next_tasks(self, free: int) -> list[Task]:
        tasks = self.tasks[self.started : self.started + free]
        self.started += len(tasks)
        return tasks

    def on_epoch(self, task: Task, epoch: int, scores: dict[str, float]) -> list[Task]:
        return []

    def on_entry(self, task: Task, entry: dict[str, Any]) -> None:
        return None

    def on_end(self, task: Task, entry: dict[str, Any]) -> None:
        self.record.add(task.configuration, entry)
        self.ended += 1


def _run(sweep: Sweep, opts: Options, record: Record, pool, backends: list) -> int:
    study = _Grid(record, retry_failed=not opts.keep_failed)
    total = len(sweep.configurations) * len(sweep.seeds)
    lost = ""
    if record.removed:
        print(
            f"sweep {sweep.name}: {len(record.removed)} configurations recorded earlier are no longer in the grid "
            f"(a value removed); their runs are kept under 'removed' in {opts.output}",
            file=sys.stderr,
        )
    if study.tasks and pool is not None:
        where = _where(opts, pool)
        again = sum(task.seed in record.runs[task.configuration.settings.experiment_name] for task in study.tasks)
        print(
            f"sweep {sweep.name}: {len(study.tasks)} of {total} runs to train ({record.n_recorded - again} already "
            f"recorded in {opts.output}" + (f"; {again} recorded as failed, trained again" if again else "")
            + f") on {where}",
            file=sys.stderr,
        )  # fmt: skip
        lost = _train(study, pool, backends, sum(task.configuration.settings.n_epochs for task in study.tasks))
    elif not study.tasks:
        print(f"sweep {sweep.name}: all {total} runs recorded in {opts.output}: nothing to train", file=sys.stderr)
    not_run = len(study.tasks) - study.ended  # a worker process ended, another process changed the results
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
    print(redact(closing_line(backends)))
    say_failed(
        document, opts.output, "change their settings (a rerun trains them again, with --keep-failed it leaves them)"
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


def _where(opts: Options, pool: Any) -> str:
    """Where a launch trains, for its first line: its local workers or its Dask cluster."""
    if opts.scheduler:
        return f"a Dask cluster at {redact(opts.scheduler)}"
    return f"{pool.workers} {opts.executor} workers"


def _train(study: Any, pool: Any, backends: list, epochs: int) -> str:
    """Train `study` (a grid's, a search's) on `pool`, recording every run, with a bar of its `epochs`;
    how the Dask scheduler was lost mid-study (its runs in progress recorded as failed), or ""."""
    progress = Progress(epochs)
    runner = Runner(study, backends, command_of_this_process(), progress, left_out=("output_file",))
    lost = ""
    try:
        runner.run(pool)
    except WorkersLost as err:
        lost = redact(str(err))
    except BaseException:
        progress.close()
        raise
    runner.deliver_records()
    progress.close()
    return lost


def say_failed(document: dict[str, Any], output: Path, rerun: str) -> None:
    """The failed runs' reasons, on stderr: those that fail the same way when trained again, apart from
    those a rerun may train; `rerun`: what to do about the former, and what a rerun does with them."""
    failed = [(c["experiment"], r) for c in document["configurations"] for r in c["runs"] if status_of(r) == "failed"]
    again = [f for f in failed if fails_again(f[1])]
    passing = [f for f in failed if not fails_again(f[1])]
    if again:
        print(
            redact(
                f"{len(again)} runs failed in training ({reasons(again)}); they are seeded, so trained again as "
                f"they are they fail the same way: {rerun}; every error is in {output}"
            ),
            file=sys.stderr,
        )
    if passing:
        print(
            redact(
                f"{len(passing)} runs failed from outside their training ({reasons(passing)}); run the same command "
                "again to train them again"
            ),
            file=sys.stderr,
        )


def _run_search(sweep: Sweep, opts: Options, study: Any, pool, backends: list) -> int:
    """The search's trials (`study`: its `experiments.search.SearchStudy`), asked and told by this process
    as their runs report; then its table, its plot and its best trial."""
    from experiments import search

    assert sweep.search is not None
    left, lost = search.runs_left(sweep, opts.output, not opts.keep_failed), ""
    if left and pool is not None:
        where = _where(opts, pool)
        print(
            f"search {sweep.name}: {len(study.named)} of {sweep.search.trials} trials asked before "
            f"({study.retries} to ask again), at most {left} runs to train on {where}; the study: "
            f"{study.storage} (optuna-dashboard opens it)",
            file=sys.stderr,
        )
        lost = _train(study, pool, backends, left * sweep.checked[0].settings.n_epochs)
    document = study.finish()
    print(search.table(document))
    with contextlib.suppress(ImportError):
        search.plot(document, opts.output.with_suffix(".png"))
    print(f"-> {opts.output}, {opts.output.with_suffix('.png')}")
    print(redact(closing_line(backends)))
    failed, running = document["search"]["n_failed"], document["search"]["n_running"]
    say_failed(
        document, opts.output, "narrow the space (a rerun asks their trials again, with --keep-failed it leaves them)"
    )
    if running:
        print(
            f"{running} trials did not complete (interrupted); run the same command again to complete them",
            file=sys.stderr,
        )
    if lost:
        print(
            f"lost the Dask scheduler at {redact(opts.scheduler)} ({lost}); run the same command again to go on",
            file=sys.stderr,
        )
    return 1 if failed or running or lost or document["n_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
