"""A Dask cluster as the runner's pool of workers (`experiments.workers` says what a pool does): a
LocalCluster of this machine, or the cluster of a running scheduler (`--scheduler`).

Dask's own mechanisms, the plainest that carry a run's records both ways as they happen:
- worker → driver: each message of a run as it comes (its start, hyperparameters, each epoch) is an event
  of the study's topic (`Worker.log_event`, sent on the worker's batched stream without waiting), which
  the scheduler passes to the driver's `Client.subscribe_topic`; its last messages (attached files, the
  summary) are the task's result, which reaches the driver after every event the task sent (one stream,
  in order). A worker that dies mid-run: Dask trains the run again on another worker, whose first
  message replaces the run's record.
- driver → worker: a stop is `Client.run` of `_stop` on every worker (through the scheduler), which marks
  the run (or the whole study) stopped there; the worker's run ends at its next epoch boundary, where it
  looks (no call per epoch: a `distributed.Event` or `Variable` would cost the scheduler a round trip
  for every epoch of every run). A study stopped by a signal waits, bounded, until its runs have stopped.

`distributed` is imported only when a sweep uses Dask (importing it takes ~0.4 s). Workers need the
repository (`experiments`) on their path, and the data (NTN_DATA_DIR); they record nothing, so they need
no tracker settings: every run is recorded by the driver.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import queue
import time
import uuid
from typing import Any

from experiments.outputs import redact
from experiments.settings import SettingError
from experiments.workers import ENDS, Deliver, compute

SCHEDULER_TIMEOUT_S = 10
WORKER_WAIT_S = 60
HALT_WAIT_S = 60  # after a signal: for the runs in progress to stop at their epoch's end
QUEUED_PER_THREAD = 2  # runs handed to the scheduler per worker thread: one training, the next one waiting
THREADS_EVERY_S = 1.0  # how often the driver asks how many worker threads the cluster has now

_stopped: set[Any] = set()  # a Dask worker's: the studies (topics) and runs ((topic, run_id)) stopped


class WorkersLost(Exception):
    """The driver lost its Dask scheduler; the message says how."""


def _stop(topic: str, run_id: str | None) -> None:
    """Run on every worker: stop the run `run_id` of the study `topic` (all its runs when None)."""
    _stopped.add(topic if run_id is None else (topic, run_id))


def _imports_experiments() -> bool:
    """Run on the scheduler: its unpickling there imports this module, as the runs' tasks do."""
    return True


def _compute_on_dask(topic: str, task: Any) -> list[tuple]:
    """One run on a Dask worker: its messages as events of `topic` as they come, its last ones returned
    (none when its study was stopped before it started)."""
    from distributed import get_worker

    if topic in _stopped:
        return []
    worker, last = get_worker(), []

    def send(hook: str, *arguments: Any) -> None:
        message = (task.run_id, hook, arguments)
        if hook == "log_artifact" or hook in ENDS:
            last.append(message)
        else:
            worker.log_event(topic, pickle.dumps(message))

    compute(task, send, lambda: topic in _stopped or (topic, task.run_id) in _stopped)
    return last


def _worker_plugin():
    """A Dask WorkerPlugin that makes every worker of the cluster, present and future, import torch and the
    experiments once (a worker that cannot is named in one line)."""
    from distributed import WorkerPlugin

    class PrepareWorker(WorkerPlugin):
        idempotent = True

        def setup(self, worker) -> None:
            import torch  # noqa: F401  here, not at the top: the driver never needs it

            import experiments.dask_pool  # noqa: F401  what the runs' tasks and stops run

    return PrepareWorker()


class DaskPool:
    """A Dask client: of a LocalCluster of `workers` single-threaded worker processes, or of the cluster
    whose scheduler is at `scheduler`.

    :raises SettingError: one line: the scheduler cannot be reached or cannot import the experiments, no
        worker joined, a worker cannot import the experiments
    """

    def __init__(self, workers: int, scheduler: str | None) -> None:
        from distributed import Client, LocalCluster

        self.cluster, self.scheduler = None, scheduler
        self.topic = f"ntn-study-{uuid.uuid4().hex}"
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("event", bytes) and ("done", run_id, future)
        self.futures: dict[str, Any] = {}  # run_id → the future of each run handed to the cluster
        self.threads, self.threads_at = workers, 0.0
        if scheduler:
            for name in ("distributed.client", "distributed.batched"):  # a lost scheduler: the sweep's one line
                logging.getLogger(name).setLevel(logging.CRITICAL)
            try:
                self.client = Client(scheduler, timeout=f"{SCHEDULER_TIMEOUT_S}s")
            except (OSError, TimeoutError, ValueError, TypeError) as err:
                reason = redact(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                raise SettingError(f"cannot reach the Dask scheduler at {redact(scheduler)!r} ({reason})") from None
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
            self._preflight()
        except SettingError:
            self.close()
            raise
        self.client.subscribe_topic(self.topic, lambda event: self.inbox.put(("event", event[1])))

    def _preflight(self) -> None:
        """Refuse, in one line, a cluster without workers, a scheduler that cannot read the runs' tasks (no
        `experiments` on its path) and a worker that cannot train them."""
        where = f"the scheduler at {redact(self.scheduler)!r}" if self.scheduler else "the LocalCluster"
        try:
            self.client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise SettingError(f"no Dask worker joined {where} in {WORKER_WAIT_S} s") from None
        if self.scheduler:
            try:
                self.client.run_on_scheduler(_imports_experiments)
            except Exception as err:  # whatever unpickling raised there, sent back
                raise SettingError(
                    f"the Dask scheduler at {redact(self.scheduler)!r} cannot import this repository's experiments "
                    f"({type(err).__name__}: {err}); start it with PYTHONPATH=/path/to/ntn (docs/experiments.md: "
                    "a cluster by hand)"
                ) from None
        try:
            self.client.register_plugin(_worker_plugin(), name="ntn-prepare-worker")
        except Exception as err:  # the worker could not load the plugin, or import what it imports
            raise SettingError(
                f"a Dask worker cannot import this repository's experiments ({type(err).__name__}: {err}); "
                "start the workers with PYTHONPATH=/path/to/ntn (docs/experiments.md: a cluster by hand)"
            ) from None

    @property
    def workers(self) -> int:
        return self._threads()

    def _threads(self) -> int:
        """The cluster's worker threads (workers may join or leave), asked at most every THREADS_EVERY_S."""
        if time.monotonic() - self.threads_at > THREADS_EVERY_S:
            try:
                self.threads = max(1, sum(self.client.nthreads().values()))
            except Exception as err:  # the scheduler is gone
                raise WorkersLost(f"{type(err).__name__}: {err}") from None
            self.threads_at = time.monotonic()
        return self.threads

    @property
    def free(self) -> int:
        return max(0, QUEUED_PER_THREAD * self._threads() - len(self.futures))

    def start(self, task: Any) -> None:
        key = f"{task.name}-{uuid.uuid4().hex[:8]}"
        future = self.client.submit(_compute_on_dask, self.topic, task, key=key, pure=False)
        self._when_done(task.run_id, future)

    def _when_done(self, run_id: str, future: Any) -> None:
        self.futures[run_id] = future
        future.add_done_callback(lambda done: self.inbox.put(("done", run_id, done)))

    def stop(self, run_id: str) -> None:
        self.client.run(_stop, self.topic, run_id)

    def wait(self, deliver: Deliver, timeout: float) -> None:
        """Deliver the messages that arrive within `timeout` s.

        :raises WorkersLost: the client lost its scheduler
        """
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            if self.client.status not in ("running", "newly-created"):
                raise WorkersLost(f"the client is {self.client.status}") from None
            return
        while True:
            self._handle(item, deliver)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: tuple, deliver: Deliver) -> None:
        if item[0] == "event":
            deliver(*pickle.loads(item[1]))
            return
        _, run_id, future = item
        if self.futures.get(run_id) is not future:  # halted: its records have ended
            return
        if future.status == "cancelled":  # not by the driver: the client cancels all when it loses its scheduler
            raise WorkersLost("the client lost its connection to the scheduler")
        if future.status == "error":  # it raised outside training, or Dask gave up on it (KilledWorker)
            del self.futures[run_id]
            err = future.exception()
            deliver(run_id, "error", (f"{type(err).__name__}: {err}",))
            return
        try:
            messages = future.result() if future.status == "finished" else None
        except Exception:
            messages = None
        if messages is None:  # the worker holding its result died first: Dask trains it again, and says when
            self._when_done(run_id, future)
            return
        del self.futures[run_id]
        for message in messages:
            deliver(*message)

    def halt(self, signal_name: str) -> None:
        """Stop every run of the study on every worker, and wait (at most HALT_WAIT_S, or until another
        signal) until the runs in progress have stopped at their epoch's end; a run not yet started never
        starts."""
        futures, self.futures = list(self.futures.values()), {}
        from distributed import wait

        with contextlib.suppress(Exception, KeyboardInterrupt):  # a scheduler gone: nothing of it to stop
            self.client.run(_stop, self.topic, None)
            wait(futures, timeout=HALT_WAIT_S)

    def close(self) -> None:
        self.futures.clear()
        with contextlib.suppress(Exception):  # a scheduler gone mid-sweep: the sweep has said so
            self.client.unsubscribe_topic(self.topic)
        with contextlib.suppress(OSError):
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
