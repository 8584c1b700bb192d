"""The one runner: a study's runs trained by workers that only compute, every run recorded by the driver.

A study is what the driver trains: run_*.sh's seeds of one configuration (`experiments.train`), a grid
(`experiments.sweep`) or a search. The runner takes its runs as the study decides them (`next_tasks`),
has a pool of workers train them (`experiments.workers`: the driver's own process, worker processes of
this machine; `experiments.dask_pool`: a Dask cluster), and records in the driver, as each worker's
message arrives, everything each run records: it opens the run at the worker's first message, passes
each epoch to its trackers and then to the study (`on_epoch`, which may stop runs as pruned: they end at
their next epoch boundary), and ends it with its summary, the study's results file (`on_entry`, `on_end`)
and the one progress bar. Workers touch no tracker and no file of the study: on a cluster too, every run
is recorded where the driver records (its TRACKER_DIR, its tracker servers).

However the driver ends, the runs it has open end as that says: interrupted by a signal (the workers'
runs stop too, within an epoch), failed by an error (a tracker refusing a run, a results file that cannot
be written, a lost scheduler), with that error.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ntn.tracking import uninterrupted, wait_delivered

from experiments.seed_run import (
    SeedRun,
    end_seed_run,
    open_seed_run,
    provenance_of,
    pruned_summary,
    run_config,
)
from experiments.settings import run_name
from experiments.sweepfile import Configuration
from experiments.workers import dataset

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}  # 128 + the signal's number
SLOW_EPOCH_S = 10.0  # a first epoch this long is said in a line, with how long its run takes
WAIT_S = 1.0  # the longest the driver waits for a worker's message before it looks again
TRACKER_WAIT_S = 120  # at the end, for the trackers to deliver in the background


@dataclasses.dataclass(frozen=True)
class Task:
    """One run: one seed of one configuration."""

    configuration: Configuration
    seed: int
    run_id: str  # its config["run_id"] (`ntn.tracking.run_id`: its name and the study's id)

    @property
    def name(self) -> str:
        return run_name(self.configuration.settings, self.seed)


class Study(Protocol):
    """What the driver trains; the runner calls these in the driver, one at a time."""

    def next_tasks(self, free: int) -> list[Task]:
        """Up to `free` runs to start now; [] while none is due. [] with no run in progress: the study is over."""

    def on_epoch(self, task: Task, epoch: int, scores: dict[str, float]) -> list[Task]:
        """An epoch of `task`, once its run recorded it (`scores` as recorded: with reg_loss, jitter, ...);
        the runs to stop now as pruned (each ends at its next epoch boundary, recorded "pruned")."""

    def on_entry(self, task: Task, entry: dict[str, Any]) -> Path | None:
        """The run's results entry, before its run ends (signals wait until it has); a file to attach to
        the run, or None. Called again with the entry failed when a tracker then cannot end the run."""

    def on_end(self, task: Task, entry: dict[str, Any]) -> None:
        """The run's results entry once its run has ended; `entry["status"]`: finished, failed or pruned."""


class Progress:
    """One bar on a terminal, for scripts and sweeps alike: epochs of the study's runs (a run that ends
    early counts its epochs left), which says what it waits for: workers starting, training (with the runs
    failed so far), trackers delivering; nothing elsewhere, or when `shown` is False. Its clock starts with
    the first run (the workers' start would make the first estimate far too long). A first epoch that takes
    `SLOW_EPOCH_S` or more is said in a line, terminal or not, with how long its run will take."""

    def __init__(self, total_epochs: int, shown: bool = True) -> None:
        self.bar = None
        self.done: dict[str, int] = {}  # run_id → epochs done, of the runs in progress
        self.started: dict[str, float] = {}  # run_id → when it started, of the runs in progress
        self.ended_epochs = self.ended = self.failed = 0
        self.said_slow = False
        if shown and sys.stderr.isatty():
            from tqdm import tqdm  # only on a terminal (importing it takes ~45 ms)

            self.bar = tqdm(total=total_epochs, unit="epoch", desc="workers starting", file=sys.stderr)

    def start(self, task: Task) -> None:
        if self.bar is not None and not self.started and not self.ended:
            self.bar.reset()  # its clock starts now
        self.started[task.run_id] = time.monotonic()

    def epoch(self, task: Task, epoch: int) -> None:
        self.done[task.run_id] = epoch + 1
        took = time.monotonic() - self.started.get(task.run_id, time.monotonic())
        if epoch == 0 and took >= SLOW_EPOCH_S and not self.said_slow:
            self.said_slow = True
            n = task.configuration.settings.n_epochs
            said = f"{task.name}: its first epoch took {took:.0f} s; its {n} epochs take about {_duration(took * n)}"
            if self.bar is not None:
                self.bar.write(said, file=sys.stderr)
            else:
                print(said, file=sys.stderr, flush=True)
        self._show("training")

    def end(self, task: Task, entry: dict[str, Any]) -> None:
        self.done.pop(task.run_id, None)
        self.started.pop(task.run_id, None)
        self.ended_epochs += task.configuration.settings.n_epochs
        self.ended += 1
        self.failed += entry["status"] == "failed"
        self._show("training", now=True)  # each run's end drawn, with its failure: runs may end within 0.1 s

    def delivering(self) -> None:
        self._show(f"trackers delivering {self.ended} runs")

    def _show(self, doing: str, now: bool = False) -> None:
        if self.bar is not None:
            self.bar.set_description(doing, refresh=False)
            self.bar.set_postfix(failed=self.failed, refresh=False)
            done = self.ended_epochs + sum(self.done.values()) - self.bar.n
            if done:
                self.bar.update(done)  # drawn at most every 0.1 s
            if now or not done:
                self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    """ "45 s", "12 min", "3.5 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class Runner:
    """Drives `study` on pools of workers (`run`), recording each of its runs in `backends`.

    :param command: the runs' provenance's command (the driver's, `command_of_this_process()`)
    :param left_out: settings that mean nothing for these runs (a sweep's write no OUTPUT_FILE)
    """

    def __init__(
        self,
        study: Study,
        backends: Sequence[Any],
        command: dict[str, Any],
        progress: Progress,
        left_out: tuple[str, ...] = (),
    ) -> None:
        self.study, self.backends, self.command, self.progress = study, list(backends), command, progress
        self.left_out = left_out
        self.running: dict[str, Task] = {}  # run_id → the task of each run a pool trains
        self.open: dict[str, SeedRun] = {}  # run_id → its tracked run, open in the driver
        self.pruned: set[str] = set()  # run_ids stopped as pruned, until they end
        self.pool: Any = None  # the pool `run` trains on
        # how it ended, for the driver's last line: the runs ended as interrupted or failed by what stopped
        # it, the run whose end it was (the signal waited until the run had ended), the run it was recording
        self.abandoned: list[Task] = []
        self.ending: Task | None = None
        self.at: Task | None = None

    def run(self, pool: Any, limit: int | None = None) -> None:
        """Start the study's runs on `pool` (at most `limit` of them) and record them until none is left.

        :raises KeyboardInterrupt: a signal; the runs in progress are recorded as interrupted, and stopped
        :raises Exception: what the driver could not do (record a run, reach the workers); the runs in
            progress are recorded as failed with it, and stopped
        """
        started, self.pool = 0, pool
        try:
            while True:
                free = pool.free if limit is None else min(pool.free, limit - started)
                with uninterrupted():  # a study's storage is never left half written (Optuna's journal)
                    tasks = self.study.next_tasks(free) if free > 0 else []
                for task in tasks:
                    pool.start(task)
                    self.running[task.run_id] = task
                    started += 1
                if not self.running:
                    return
                pool.wait(self._deliver, WAIT_S)
        except BaseException as err:
            self._abandon(err)
            self.running.clear()
            if isinstance(err, KeyboardInterrupt):
                pool.halt(getattr(err, "signal_name", "SIGINT"))
            raise

    def _deliver(self, run_id: str, hook: str, arguments: tuple) -> None:
        """Record a worker's message about its run `run_id`."""
        task = self.running.get(run_id)
        if task is None:  # a run that ended meanwhile (stopped, and its worker's last messages)
            return
        self.at = task
        if hook == "start":
            if run_id in self.open:  # Dask trains it again (its worker was lost): this attempt replaces it
                self._close(run_id, RuntimeError("its worker was lost; trained again on another"))
            self.open[run_id] = self._open(task, arguments[0])
            self.progress.start(task)
            return
        if hook in ("summary", "stopped", "error"):
            del self.running[run_id]
            if hook == "summary":
                summary = arguments[0]
            elif hook == "stopped":
                summary = pruned_summary(task.seed, arguments[0])
            else:
                summary = {"seed": task.seed, "success": False, "error": arguments[0]}
            self._end(task, summary)
            return
        run = self.open[run_id].run
        if hook == "log_artifact":
            _attach(run, *arguments)
            return
        getattr(run, hook)(*arguments)
        if hook == "callback_epoch":
            epoch, scores, extra = arguments
            self.progress.epoch(task, epoch)
            with uninterrupted():
                stops = self.study.on_epoch(task, epoch, scores | extra)
            for stopped in stops:
                if stopped.run_id in self.running and stopped.run_id not in self.pruned:
                    self.pruned.add(stopped.run_id)
                    self.pool.stop(stopped.run_id)

    def _open(self, task: Task, trained_on: dict[str, Any] | None) -> SeedRun:
        """The run's tracked run, started as run_*.sh starts it, on the machine and device the worker says."""
        configuration = task.configuration
        s = configuration.settings
        if trained_on is not None:
            s = dataclasses.replace(s, device=trained_on["device"])
        data = dataset(s.dataset, s.n_samples, s.data_seed, s.preprocessing)
        config = run_config(configuration.model, s, data, self.backends, self.left_out)
        config |= configuration.tracked | {"run_id": task.run_id}
        provenance = provenance_of(s, data, self.command, trained_on)
        try:
            return open_seed_run(s, task.seed, self.backends, config, provenance)
        except BaseException:  # it ended as it started: interrupted, or refused by a tracker
            self.abandoned.append(task)
            raise

    def _end(self, task: Task, summary: dict[str, Any]) -> None:
        """End the run with its summary; then the study has its entry (even when a signal that waited
        during the run's end is raised as it ends)."""
        seed_run = self.open.pop(task.run_id, None) or self._open(task, None)  # it failed before it started
        self.pruned.discard(task.run_id)
        on_entry = lambda entry: self.study.on_entry(task, entry)  # noqa: E731
        entry = None
        try:
            with seed_run.stack:
                entry = end_seed_run(seed_run, summary, task.configuration.quality, on_entry)
        except BaseException:  # the run has ended as this says; with its entry, when it came as the run ended
            if entry is None:
                self.abandoned.append(task)
            else:
                self.ending = task
            raise
        finally:
            if entry is not None:
                with uninterrupted():
                    self.progress.end(task, entry)
                    self.study.on_end(task, entry)

    def _close(self, run_id: str, err: BaseException) -> None:
        """End an open run as `err` says (interrupted by a signal, failed by an error), without its entry."""
        self.open.pop(run_id).stack.__exit__(type(err), err, err.__traceback__)

    def _abandon(self, err: BaseException) -> None:
        """End every open run as `err` says; a signal arriving meanwhile ends none of them early."""
        self.abandoned += [self.running[run_id] for run_id in self.open if run_id in self.running]
        for run_id in list(self.open):
            try:
                self._close(run_id, err)
            except KeyboardInterrupt:
                continue

    def deliver_records(self) -> None:
        """Wait (at most TRACKER_WAIT_S) for the trackers to deliver in the background what they recorded,
        so that the runs are in their trackers when the study says so."""
        self.progress.delivering()
        if not wait_delivered(TRACKER_WAIT_S):
            print(
                f"the trackers were still delivering after {TRACKER_WAIT_S} s; they go on as this process "
                "ends, or keep what is left for `ntn-trackers sync`",
                file=sys.stderr,
            )


def _attach(run: Any, content: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_bytes(content)
        run.log_artifact(path)
