"""Where a study's runs train on this machine, and what a worker does with a run wherever it is.

A worker only computes: `compute` trains one run and sends everything its tracked run would record
(`Relay`) to the driver, which records it (`experiments.runner`). At each epoch's end it asks whether the
driver wants the run stopped (pruned, or the driver was signalled) and, if so, raises `Stopped` there.

A pool of workers takes runs with `start`, says how many more it takes now (`free`), hands each worker
message `(run_id, hook, arguments)` to the driver's `deliver` as it arrives (`wait`), passes a stop to a
run (`stop`), stops every run (`halt`) and ends its workers (`close`). Here: `InlinePool`, the driver's own
process; `LocalPool`, worker processes of this machine. A Dask cluster is `experiments.dask_pool`.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ntn.tracking.provenance import machine

from experiments.dataset_loader import load_dataset
from experiments.seed_run import trained_on, trained_seed
from experiments.settings import usable_cores

# auto: side by side once the seeds left would take this long one after another. Measured (docs/benchmarks.md,
# "Seeds side by side"): at the defaults they take ~0.25 s, and two workers make the command 0.13 s faster
PARALLEL_FROM_S = 0.1
SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
ENDS = ("summary", "stopped", "error")  # the hooks of a run's last message

Send = Callable[..., None]  # send(hook, *arguments): a worker's message about its run to the driver
Deliver = Callable[[str, str, tuple], None]  # deliver(run_id, hook, arguments): the driver records it


class Stopped(Exception):
    """The driver stopped the run; raised in the worker at the end of epoch `epoch`."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"stopped after epoch {epoch}")
        self.epoch = epoch


class Relay:
    """A worker's stand-in for a run's TrackedRun: what `run_seed` tells it goes to the driver by `send`;
    after each epoch, `stopped()` says whether the driver wants the run to end there."""

    def __init__(self, send: Send, stopped: Callable[[], bool]) -> None:
        self.send, self.stopped = send, stopped

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self.send("log_hparams", hparams)

    def callback_init(self, scores: dict[str, float], info: dict[str, Any]) -> None:
        self.send("callback_init", dict(scores), {})  # a TrackedRun records the scores only

    def callback_epoch(self, epoch: int, scores: dict[str, float], info: dict[str, Any]) -> None:
        extra = {k: info[k] for k in ("reg_loss", "jitter", "weight_norm_sq") if k in info}  # what a run records
        self.send("callback_epoch", epoch, dict(scores), extra)
        if self.stopped():
            raise Stopped(epoch)

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> None:
        """The file's content, sent: the worker may remove it once this returns."""
        self.send("log_artifact", Path(path).read_bytes(), name or os.path.basename(path))


def dataset(name: str, n_samples: int, data_seed: int, preprocessing: str):
    """A data set loaded once per process and NTN_DATA_DIR (the driver and each worker train many runs on the
    same few; a forked worker inherits the driver's)."""
    return _dataset(name, n_samples, data_seed, preprocessing, os.environ.get("NTN_DATA_DIR", ""))


@functools.lru_cache(maxsize=8)
def _dataset(name: str, n_samples: int, data_seed: int, preprocessing: str, data_dir: str):
    return load_dataset(name, n_samples, data_seed, preprocessing)  # data_dir: part of the key, read by the loader


@functools.lru_cache(maxsize=1)
def _machine() -> dict[str, Any]:
    return machine()


def compute(task: Any, send: Send, stopped: Callable[[], bool]) -> None:
    """Train `task` (`experiments.runner.Task`) in this process, as run_*.sh trains a seed: first "start"
    (the machine and device it trains on), then what its run records, and last "summary" (a failed one
    when training raised), or "stopped" (the epoch after which the driver stopped it)."""
    import ntn  # its trainer imports torch: in a worker, never in a driver that only records

    configuration = task.configuration
    device = str(ntn.resolve_device(configuration.settings.device))
    s = dataclasses.replace(configuration.settings, device=device)
    send("start", trained_on(device, _machine()))
    data = dataset(s.dataset, s.n_samples, s.data_seed, s.preprocessing)
    try:
        summary = trained_seed(configuration.model, s, data, task.seed, Relay(send, stopped))
    except Stopped as stop:
        send("stopped", stop.epoch)
        return
    send("summary", summary)


def worker_count(workers: int, seeds_left: int, seed_seconds: float, helpers: int = 0) -> int:
    """How many processes train the seeds left, each at one torch thread: WORKERS when given (> 0), else (auto,
    0) one per core this process may use, less one per tracker `helpers` process (aim's uploader delivers
    runs as they end: measured, the command is 0.06 s faster with its own core than beside two workers),
    when they would take at least PARALLEL_FROM_S one after another."""
    if "fork" not in multiprocessing.get_all_start_methods():  # Windows: one after another
        return 1
    if workers > 0:
        return min(workers, seeds_left)
    if seeds_left * seed_seconds < PARALLEL_FROM_S:
        return 1
    return max(1, min(usable_cores() - helpers, seeds_left))


class InlinePool:
    """The driver's own process as the one worker: a run trains there, each record delivered as it comes."""

    workers = 1

    def __init__(self) -> None:
        self.task: Any = None
        self.stops: set[str] = set()

    @property
    def free(self) -> int:
        return 0 if self.task is not None else 1

    def start(self, task: Any) -> None:
        self.task = task

    def stop(self, run_id: str) -> None:
        self.stops.add(run_id)

    def wait(self, deliver: Deliver, timeout: float) -> None:
        """Train the run started; an exception of the driver's (recording it) propagates."""
        task, self.task = self.task, None
        delivering = [False]

        def send(hook: str, *arguments: Any) -> None:
            delivering[0] = True
            deliver(task.run_id, hook, arguments)
            delivering[0] = False

        try:
            compute(task, send, lambda: task.run_id in self.stops)
        except Exception as err:
            if delivering[0]:
                raise
            deliver(task.run_id, "error", (f"{type(err).__name__}: {err}",))

    def halt(self, signal_name: str) -> None:
        """Nothing: the signal's exception has ended the run training here."""

    def close(self) -> None:
        pass


@dataclasses.dataclass
class _Worker:
    process: Any
    run_id: str | None = None  # the run it trains


class LocalPool:
    """`workers` processes of this machine, each training one run at a time, at one torch thread unless
    TORCH_THREADS says: forked from the driver (they start in milliseconds with torch, the data and the
    plugins already loaded; CPU only, as CUDA set up before a fork is unusable) or, with `fork=False`
    (a GPU), spawned. A worker that dies is replaced; the run it trained ends with its exit code. A worker
    ends with the driver, however it ends: it ignores signals (the driver stops it) and its next message
    or wait for a run fails once the driver is gone."""

    def __init__(self, workers: int, fork: bool = True) -> None:
        self.context = multiprocessing.get_context("fork" if fork else "spawn")
        self.fork = fork
        self.pool: dict[Any, _Worker] = {}  # the driver's end of each worker's pipe → the worker
        if fork:
            gc.freeze()  # as Python's gc docs advise before a fork: the workers share this process's objects
        for _ in range(workers):
            self._add()

    @property
    def workers(self) -> int:
        return len(self.pool)

    def _add(self) -> None:
        mine, theirs = self.context.Pipe(duplex=True)
        inherited = [mine, *self.pool] if self.fork else []  # the driver's ends a forked worker must close
        process = self.context.Process(target=_serve, args=(theirs, inherited), daemon=True)
        process.start()
        theirs.close()
        self.pool[mine] = _Worker(process)

    @property
    def free(self) -> int:
        return sum(worker.run_id is None for worker in self.pool.values())

    def start(self, task: Any) -> None:
        connection = next(c for c, worker in self.pool.items() if worker.run_id is None)
        connection.send(("run", task))
        self.pool[connection].run_id = task.run_id

    def stop(self, run_id: str) -> None:
        for connection, worker in self.pool.items():
            if worker.run_id == run_id:
                connection.send(("stop", run_id))

    def wait(self, deliver: Deliver, timeout: float) -> None:
        """Deliver the messages that arrive within `timeout` s; a worker that died ends its run as failed."""
        for connection in multiprocessing.connection.wait(list(self.pool), timeout):
            worker = self.pool[connection]
            try:
                while True:
                    run_id, hook, arguments = connection.recv()
                    if hook in ENDS:
                        worker.run_id = None
                    deliver(run_id, hook, arguments)
                    if not connection.poll():
                        break
            except EOFError:  # it died: a crash, the OOM killer
                worker.process.join()
                del self.pool[connection]
                connection.close()
                if worker.run_id is not None:
                    error = f"the worker process training it ended with exit code {worker.process.exitcode}"
                    self._add()
                    deliver(worker.run_id, "error", (error,))

    def halt(self, signal_name: str) -> None:
        """Stop every run at once: the driver has recorded them as interrupted."""
        self.close()

    def close(self) -> None:
        for connection, worker in self.pool.items():
            worker.process.kill()
            worker.process.join()
            connection.close()
        self.pool.clear()
        if self.fork:
            gc.unfreeze()


def _serve(connection: Any, inherited: list) -> None:
    """A worker process: train each run the driver sends, until the driver is gone."""
    for other in inherited:  # a forked worker holding them would keep its own pipe, and the others', open
        other.close()
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # the driver ends its workers when it is signalled
    import torch

    torch.set_num_threads(1)  # first: OpenMP's threads of a forked parent are not in this process (a pool would hang)
    while True:
        try:
            kind, what = connection.recv()
        except EOFError:  # the driver is gone
            return
        if kind != "run":  # a stop that came after its run ended
            continue
        task = what

        def send(hook: str, *arguments: Any, run_id: str = task.run_id) -> None:
            connection.send((run_id, hook, arguments))

        def stopped(run_id: str = task.run_id) -> bool:
            asked = False
            while connection.poll():
                kind, what = connection.recv()
                asked = asked or (kind == "stop" and what == run_id)
            return asked

        try:
            compute(task, send, stopped)
        except (BrokenPipeError, ConnectionResetError, EOFError):  # the driver is gone: nobody to train for
            return
        except Exception as err:
            try:
                send("error", f"{type(err).__name__}: {err}")
            except (BrokenPipeError, ConnectionResetError):
                return
