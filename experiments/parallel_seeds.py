"""An experiment's seeds trained side by side in worker processes forked from run_*.sh's own process, which
keeps every record: each worker trains its seeds with a `Relay` for the run, and the script's process
passes what it is told on to the seed's tracked run as it arrives, so the runs, their times, the results
file and the progress bar are those of seeds trained one after another.

Forked, the workers start in milliseconds with torch, the data and the plugins already loaded. They touch no
tracker, none of the experiment's files and no terminal (inherited tracker threads, locks and connections
stay the parent's; a model file is written to a temporary directory and sent), and run on the CPU only (a
forked process cannot use CUDA set up before the fork).
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from experiments.settings import usable_cores

# auto: side by side once the seeds left would take this long one after another. Measured (docs/benchmarks.md,
# "Seeds side by side"): at the defaults they take ~0.25 s, and two workers make the command 0.13 s faster
PARALLEL_FROM_S = 0.1


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


class Relay:
    """A worker's stand-in for a seed's TrackedRun: what `run_seed` tells it goes to the script's process."""

    def __init__(self, connection: multiprocessing.connection.Connection, seed: int) -> None:
        self.connection, self.seed = connection, seed

    def _send(self, hook: str, *arguments: Any) -> None:
        self.connection.send((self.seed, hook, arguments))

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self._send("log_hparams", hparams)

    def callback_init(self, scores: dict[str, float], info: dict[str, Any]) -> None:
        self._send("callback_init", scores, info)

    def callback_epoch(self, epoch: int, scores: dict[str, float], info: dict[str, Any]) -> None:
        self._send("callback_epoch", epoch, scores, info)

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> None:
        """The file's content, sent: the worker may remove it once this returns."""
        self._send("log_artifact", Path(path).read_bytes(), name or os.path.basename(path))


def _work(
    connection: multiprocessing.connection.Connection,
    seeds: Sequence[int],
    train: Callable[[int, Relay], dict],
    readers: Sequence[multiprocessing.connection.Connection],
) -> None:
    """A worker: train each seed, send its summary. A signal ends it at once (the script's process records
    the runs it was training as interrupted); so does the end of the script's process (its next send fails:
    the read ends it inherited, `readers`, are closed first, or it would hold its own pipe open)."""
    for reader in readers:
        reader.close()
    import torch  # loaded already, before the fork

    torch.set_num_threads(1)  # first: OpenMP's threads of the parent are not in this process (its pool would hang)
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        for seed in seeds:
            connection.send((seed, "summary", (train(seed, Relay(connection, seed)),)))
    except BrokenPipeError:  # the script's process is gone (killed): nobody to train for
        return
    connection.close()


def train_side_by_side(
    seeds: Sequence[int],
    workers: int,
    train: Callable[[int, Relay], dict],
    open_run: Callable[[int], Any],
    end_run: Callable[[Any, dict], None],
    on_epoch: Callable[[int, int, dict, dict], None],
) -> None:
    """Train `seeds` in `workers` forked processes (seeds dealt round-robin) while this process records them.

    :param train: (seed, run) → the seed's summary, in a worker; `run` is a `Relay`
    :param open_run: seed → its tracked run, started (`seed_run.SeedRun`: its `run`, and the `stack` that ends
        it), at the seed's first record
    :param end_run: (that SeedRun, the summary): records the seed's end; then its `stack` is closed
    :param on_epoch: (seed, epoch, scores, info) for the progress bar, after the run has the epoch

    A worker that dies leaves its seeds recorded as failed with its exit code. An exception here (a signal,
    a tracker refusing a run) ends the runs in progress with it, stops the workers, and propagates.
    """
    context = multiprocessing.get_context("fork")
    readers: dict[Any, tuple[Any, list[int]]] = {}  # connection → (its process, the seeds it has not ended)
    opened: dict[int, Any] = {}  # seed → its SeedRun
    gc.freeze()  # as Python's gc docs advise before a fork: the workers share this process's objects uncopied
    try:
        for k in range(workers):
            reader, writer = context.Pipe(duplex=False)
            inherited = [reader, *readers]  # the read ends open in this process, which the worker gets too
            process = context.Process(target=_work, args=(writer, seeds[k::workers], train, inherited), daemon=True)
            process.start()
            writer.close()
            readers[reader] = (process, list(seeds[k::workers]))
        while readers:
            for reader in multiprocessing.connection.wait(list(readers)):
                process, left = readers[reader]
                try:
                    seed, hook, arguments = reader.recv()
                except EOFError:  # the worker ended: after its last seed, or it died
                    process.join()
                    del readers[reader]
                    for seed in left:
                        seed_run = opened.pop(seed) if seed in opened else open_run(seed)
                        with seed_run.stack:
                            error = f"the worker process training it ended with exit code {process.exitcode}"
                            end_run(seed_run, {"seed": seed, "success": False, "error": error})
                    continue
                if seed not in opened:
                    opened[seed] = open_run(seed)
                seed_run = opened[seed]
                if hook == "summary":
                    del opened[seed]
                    left.remove(seed)
                    with seed_run.stack:
                        end_run(seed_run, arguments[0])
                elif hook == "log_artifact":
                    _attach(seed_run.run, *arguments)
                else:
                    getattr(seed_run.run, hook)(*arguments)
                    if hook == "callback_epoch":
                        on_epoch(seed, *arguments)
    except BaseException:
        for seed_run in opened.values():  # the runs in progress end as this does: interrupted, or failed
            seed_run.stack.__exit__(*sys.exc_info())
        raise
    finally:
        for process, _ in readers.values():
            process.kill()
            process.join()
        gc.unfreeze()


def _attach(run: Any, content: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_bytes(content)
        run.log_artifact(path)
