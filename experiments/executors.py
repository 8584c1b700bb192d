"""Where a sweep's runs train: worker processes of this machine (`LocalExecutor`) or a Dask cluster
(`DaskExecutor`). Both take runs with `submit`, give them back with `as_completed`, wait for the workers'
trackers at the end, and stop: a worker never outlives its sweep, however the sweep ends.

Each worker process imports torch, the trainer and the tracker plugins once and checks its trackers'
environment there (a cluster's workers have their own): Dask's `WorkerPlugin` does so on every worker,
present and future; the local pool's initializer on each of its processes. `distributed` is imported
only when a sweep uses Dask (importing it takes ~0.4 s).

Before any run on Dask, the scheduler must import `experiments` (it unpickles the runs' tasks), and with the
file backend every worker must see the driver's TRACKER_DIR (it reads a file the driver just wrote there).
A stopped sweep's runs in progress are interrupted on every worker (Dask's cancel lets a running task go on).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ntn.errors import NtnError
from ntn.files import open_directory
from ntn.tracking import TrackerError, prepare, stop_on_signals, validate, wait_delivered

from experiments.outputs import redact
from experiments.settings import SETTINGS, SettingError
from experiments.sweepfile import Configuration
from experiments.train import train_run

SCHEDULER_TIMEOUT_S = 10
WORKER_WAIT_S = 60
TRACKER_WAIT_S = 120  # at the end, for the workers' trackers to deliver in the background
ORPHAN_CHECK_S = 1.0  # how often a local worker looks whether its sweep is still there
ORPHAN_GRACE_S = 10.0  # after its sweep died: to record its run as interrupted, then it ends
DEFAULT_TRACKER_DIR = next(s.default for s in SETTINGS if s.env == "TRACKER_DIR")


class WorkerSetupError(NtnError, RuntimeError):
    """A worker cannot train this sweep's runs; the message names the worker and why."""


def prepare_worker(backend: str) -> None:
    """Import torch and the tracker plugins once per worker process, and check the trackers' environment
    there. (Each run trains at `ntn.threads.training_threads()`: one torch thread unless TORCH_THREADS says.)

    :raises WorkerSetupError: naming the worker (host:pid) and why it cannot train
    """
    try:
        prepare(validate(backend, []))  # aim's uploader imports aim while this worker imports torch
    except TrackerError as err:
        raise WorkerSetupError(f"worker {os.uname().nodename}:{os.getpid()}: {err}") from None
    import torch  # noqa: F401  here, not at the top: the sweep's own process never needs it


def wait_for_trackers(timeout: float) -> bool:
    return wait_delivered(timeout)


def _report_late(late: int) -> None:
    if late:
        print(
            f"trackers of {late} workers were still delivering after {TRACKER_WAIT_S} s; they go on "
            "there, or keep what is left for `ntn-trackers sync`",
            file=sys.stderr,
        )


# ---- local worker processes ------------------------------------------------------------------------------

_stopping = {"signal": ""}  # a local worker's: the sweep is being stopped, start no other run
_every_worker: list[Any] = []  # a local worker's: the barrier that sends one tracker wait to each worker


def _note_stop(signum: int, frame: Any) -> None:
    _stopping["signal"] = signal.Signals(signum).name


def _watch_parent(parent: int) -> None:
    """End this worker once its sweep is gone (killed, even with SIGKILL): first as a signal would, so that
    a run in progress is recorded as interrupted, then for good after ORPHAN_GRACE_S."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


def _start_local_worker(backend: str, every_worker: Any, parent: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="ntn-orphan-watch").start()
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # between runs a signal only stops the worker's next run
        signal.signal(getattr(signal, name), _note_stop)
    _every_worker.append(every_worker)
    prepare_worker(backend)


def _wait_for_trackers_locally(timeout: float) -> bool:
    """One worker's wait, held at the barrier until every worker has taken one, so that each waits once."""
    try:
        _every_worker[0].wait(timeout)
    except threading.BrokenBarrierError:
        return False
    return wait_for_trackers(timeout)


def _train_local(
    model: str, settings: Any, seed: int, run_id: str, tracked: dict[str, Any], command: dict[str, Any]
) -> dict[str, Any] | None:
    """One run in a local worker; None when the sweep is being stopped (its run, if it had begun, is
    recorded as interrupted by its trackers, and the sweep trains it again next time)."""
    if _stopping["signal"]:
        return None
    previous = stop_on_signals()
    try:
        return train_run(model, settings, seed, run_id, tracked, command)
    except KeyboardInterrupt as err:
        _stopping["signal"] = getattr(err, "signal_name", "SIGINT")
        return None
    finally:
        for signum in previous:
            signal.signal(signum, _note_stop)


class LocalExecutor:
    """Worker processes on this machine, one torch thread each (`ntn.threads`)."""

    def __init__(self, workers: int, backend: str, command: dict[str, Any]) -> None:
        self.command = command  # the sweep's, for its runs' provenance
        context = multiprocessing.get_context("spawn")  # never fork a process that may hold threads
        self.workers = workers
        self.pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_local_worker,
            initargs=(backend, context.Barrier(workers), os.getpid()),
        )

    def submit(self, model: str, configuration: Configuration, seed: int, run_id: str):
        settings, tracked = configuration.settings, configuration.tracked
        return self.pool.submit(_train_local, model, settings, seed, run_id, tracked, self.command)

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

    def stop(self, signal_name: str = "SIGINT") -> None:
        """Start no other run; let the runs in progress record that they were interrupted (by SIGINT, sent
        to each worker process)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():
            with contextlib.suppress(OSError):
                os.kill(child.pid, signal.SIGINT)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# ---- Dask -----------------------------------------------------------------------------------------------


def _worker_plugin(backend: str):
    """A Dask WorkerPlugin that prepares every worker of the cluster, present and future."""
    from distributed import WorkerPlugin

    class PrepareWorker(WorkerPlugin):
        idempotent = True

        def setup(self, worker) -> None:
            prepare_worker(backend)

    return PrepareWorker()


def _imports_experiments() -> bool:
    """Run on the scheduler: its unpickling there imports this module, as the runs' tasks do."""
    return True


def _token_seen(name: str, token: str) -> str:
    """Run on a worker: "" when the file `name` in this worker's TRACKER_DIR holds `token`, else that
    directory's absolute path (where its runs would be recorded instead)."""
    directory = Path(os.environ.get("TRACKER_DIR") or DEFAULT_TRACKER_DIR).absolute()
    try:
        with open_directory(directory) as directory_fd:
            fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=directory_fd)
            with os.fdopen(fd, encoding="utf-8") as file:
                return "" if file.read() == token else str(directory)
    except OSError:
        return str(directory)


@contextlib.contextmanager
def _token_in(tracker_dir: str) -> Iterator[tuple[str, str]]:
    """A file of a new token in `tracker_dir` for the block (its name, the token), removed after."""
    token = uuid.uuid4().hex
    name = f".ntn-sweep-{token[:12]}.check"
    Path(tracker_dir).mkdir(parents=True, exist_ok=True)
    with open_directory(tracker_dir) as directory_fd:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(name, flags, 0o600, dir_fd=directory_fd), "w", encoding="utf-8") as file:
            file.write(token)
        try:
            yield name, token
        finally:
            os.unlink(name, dir_fd=directory_fd)


_dask_runs: dict[int, str] = {}  # a Dask worker's: the thread training each run in progress → its executor's key
_dask_stopped: set[str] = set()  # a Dask worker's: the keys of executors stopped (their runs queued here never start)


def _train_on_dask(
    key: str, model: str, settings: Any, seed: int, run_id: str, tracked: dict[str, Any], command: dict[str, Any]
) -> dict[str, Any] | None:
    """One run on a Dask worker; None when its sweep was stopped meanwhile (`_stop_dask_runs`: the run is
    recorded as interrupted, and the sweep trains it again next time)."""
    thread = threading.get_ident()
    _dask_runs[thread] = key
    try:
        if key in _dask_stopped:  # after registering: a stop either sees this thread or is seen here
            return None
        return train_run(model, settings, seed, run_id, tracked, command)
    except KeyboardInterrupt:
        return None
    finally:
        _dask_runs.pop(thread, None)


def _stop_dask_runs(key: str, signal_name: str) -> int:
    """Run on a Dask worker: interrupt its runs of the executor `key` as `signal_name` would (a
    KeyboardInterrupt raised in the threads training them), and start none of its runs queued there; how many
    were interrupted."""
    stop = type("Stopped", (KeyboardInterrupt,), {"signal_name": signal_name})
    _dask_stopped.add(key)
    threads = [thread for thread, owner in list(_dask_runs.items()) if owner == key]
    for thread in threads:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(stop))
    return len(threads)


class DaskExecutor:
    """A Dask client: of a LocalCluster of `workers` single-threaded worker processes, or of the cluster
    whose scheduler is at `scheduler`. Dask runs a dead worker's runs again on another worker.
    `tracker_dir`: the driver's TRACKER_DIR, which every worker must see (the file backend), else None."""

    def __init__(
        self,
        workers: int,
        scheduler: str | None,
        backend: str,
        command: dict[str, Any],
        tracker_dir: str | None = None,
    ) -> None:
        self.command = command  # the sweep's, for its runs' provenance
        from distributed import Client, LocalCluster

        self.cluster, self.workers = None, workers
        self.key = uuid.uuid4().hex  # its runs', on the workers (`stop`)
        if scheduler:
            logging.getLogger("distributed.client").setLevel(logging.CRITICAL)  # a lost scheduler: the sweep's line
            shown = redact(scheduler)
            try:
                self.client = Client(scheduler, timeout=f"{SCHEDULER_TIMEOUT_S}s")
            except (OSError, TimeoutError, ValueError, TypeError) as err:
                reason = redact(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                raise SettingError(f"cannot reach the Dask scheduler at {shown!r} ({reason})") from None
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
            where = f"the scheduler at {redact(scheduler)!r}" if scheduler else "the LocalCluster"
            raise SettingError(f"no Dask worker joined {where} in {WORKER_WAIT_S} s") from None
        try:
            self._preflight(scheduler, tracker_dir)
        except (SettingError, OSError):  # OSError: the check's file cannot be written in TRACKER_DIR
            self.close()
            raise
        try:
            self.client.register_plugin(_worker_plugin(backend), name="ntn-prepare-worker")
        except WorkerSetupError as err:
            self.close()
            raise SettingError(str(err)) from None
        except Exception as err:  # the worker could not even load the plugin: no `experiments` on its path
            self.close()
            raise SettingError(
                f"a Dask worker cannot import this repository's experiments ({type(err).__name__}: {err}); "
                "start the workers with PYTHONPATH=/path/to/ntn (docs/experiments.md: a cluster by hand)"
            ) from None

    def _preflight(self, scheduler: str | None, tracker_dir: str | None) -> None:
        """Refuse, in one line, a scheduler that cannot read the runs' tasks (no `experiments` on its path),
        and a worker that does not see `tracker_dir` (its runs would be recorded elsewhere).

        :raises SettingError: naming the scheduler or the worker
        """
        if scheduler:
            try:
                self.client.run_on_scheduler(_imports_experiments)
            except Exception as err:  # whatever unpickling raised there, sent back
                raise SettingError(
                    f"the Dask scheduler at {redact(scheduler)!r} cannot import this repository's experiments "
                    f"({type(err).__name__}: {err}); start it with PYTHONPATH=/path/to/ntn (docs/experiments.md: "
                    "a cluster by hand)"
                ) from None
        if tracker_dir is None:
            return
        with _token_in(tracker_dir) as (name, token):
            try:
                seen = self.client.run(_token_seen, name, token)
            except Exception:  # a worker that cannot import experiments: register_plugin names it
                return
        blind = {worker: where for worker, where in seen.items() if where}
        if blind:
            worker, where = next(iter(blind.items()))
            raise SettingError(
                f"Dask worker {worker} does not see this sweep's TRACKER_DIR {str(Path(tracker_dir).absolute())!r} "
                f"(its runs would be recorded in its own {where!r}; {len(blind)} of {len(seen)} workers so): give "
                "every worker the same TRACKER_DIR, an absolute path on a file system they share"
            )

    def submit(self, model: str, configuration: Configuration, seed: int, run_id: str):
        key = f"{configuration.settings.experiment_name}_seed{seed}-{uuid.uuid4().hex[:8]}"
        return self.client.submit(
            _train_on_dask,
            self.key,
            model,
            configuration.settings,
            seed,
            run_id,
            configuration.tracked,
            self.command,
            key=key,
            pure=False,
        )

    def as_completed(self, futures):
        from distributed import as_completed

        return as_completed(list(futures))

    def wait_for_trackers(self) -> None:
        """Until every worker's trackers have delivered what they recorded (bounded), so that the runs are
        in their trackers when the sweep says so, also on a cluster whose workers live on."""
        _report_late(sum(not done for done in self.client.run(wait_for_trackers, TRACKER_WAIT_S).values()))

    def stop(self, signal_name: str = "SIGINT") -> None:
        """Start no other run, and interrupt those in progress on every worker (Dask's cancel lets a running
        task go on): each is recorded as interrupted by `signal_name`."""
        self.client.cancel(list(self.client.futures.values()) if self.client.futures else [])
        with contextlib.suppress(Exception):  # a worker gone, a scheduler gone: nothing of it to stop
            self.client.run(_stop_dask_runs, self.key, signal_name)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a scheduler gone mid-sweep: the sweep has said so
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
