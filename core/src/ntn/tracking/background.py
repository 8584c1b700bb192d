"""Hooks off the training thread, for trackers that talk to a server.

`Background(factory)` is a tracker whose hooks only queue their call and return. One thread of its own
builds the real tracker with `factory()` and makes the calls on it, in order, so a slow or unreachable
server never holds training. What goes wrong on that thread is reported like any tracker failure: the
next hook call on the training thread (or `finalize`) raises it, and the core disables the tracker,
warns, and lists it in `run.failures`. `finalize` waits at most `timeout` seconds for the calls still
queued, and never longer than what is left of the process's exit budget (`ntn.tracking.budget`, shared by
all runs); the calls not made by then are lost, and `finalize` raises a TimeoutError that counts them.
Once the budget is spent, the core calls `cut_off()` on the backend's class: every tracker of that class
drops the calls still queued, and later ones, instead of making them.

    class MyTracker(Background):
        def __init__(self, experiment_name, config=None):
            super().__init__(lambda: MyServerRun(experiment_name, config or {}), timeout=30, name="mine")

The real tracker implements any of the six hooks, with their full signatures (`finalize(status, end_time)`).
The copies of files queued for `log_artifact` are removed once the real tracker has had them, and at the
latest when `finalize` returns, even when the calls for them were lost.

The thread is a daemon thread fed by a queue, not a one-worker `ThreadPoolExecutor` (MLflow's
`AsyncLoggingQueue`): Python joins an executor's threads at exit, so one server call that never returns
would hang the process for ever (tested: `test_a_call_that_never_returns_does_not_hold_the_process_at_exit`).
"""

from __future__ import annotations

import copy
import os
import queue
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from ntn.tracking import budget

_DONE = None


class Background:
    """A tracker that runs `factory()`'s tracker on one thread of its own (see the module)."""

    _live: ClassVar[weakref.WeakSet[Background]] = weakref.WeakSet()  # for `cut_off`

    def __init__(self, factory: Callable[[], Any], timeout: float = 30.0, name: str = "tracker") -> None:
        self.timeout = timeout
        self._cut = threading.Event()  # the core waits no longer: calls still queued are dropped
        Background._live.add(self)
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._reported = False
        self._copies: set[str] = set()  # directories of the file copies still queued
        self._thread = threading.Thread(target=self._work, args=(factory,), daemon=True, name=f"ntn-{name}")
        self._thread.start()

    def _work(self, factory: Callable[[], Any]) -> None:
        tracker = None
        try:
            tracker = factory()
        except BaseException as err:
            self._error = err
        while (call := self._calls.get()) is not _DONE:
            hook, args = call
            if hook == "finalize" and self._error is not None:  # a record missing calls is never "finished"
                args = ("failed" if args[0] == "finished" else args[0], args[1])
            try:
                # after a failure only finalize still reaches the tracker; a hook it leaves out is skipped
                if tracker is not None and not self._cut.is_set() and (self._error is None or hook == "finalize"):
                    method = getattr(tracker, hook, None)
                    if method is not None:
                        method(*args)
            except BaseException as err:
                self._error = self._error or err
            finally:
                if hook == "log_artifact":  # the tracker has had the queued copy: remove it
                    shutil.rmtree(os.path.dirname(args[0]), ignore_errors=True)
                    self._copies.discard(os.path.dirname(args[0]))

    def _put(self, hook: str, *args: Any) -> None:
        if self._error is not None and not self._reported:
            self._reported = True  # the core disables this tracker now: only finalize comes after
            raise self._error
        self._calls.put((hook, copy.deepcopy(args)))  # the caller may change its dicts after we return

    def log_provenance(self, provenance: dict[str, Any]) -> None:
        self._put("log_provenance", provenance)

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self._put("log_hparams", hparams)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._put("log_metrics", metrics, step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self._put("log_summary", summary)

    def log_artifact(self, path: str, name: str) -> None:
        """Queue a copy of the file (the caller may change or remove it once this returns); the thread
        removes the copy once the real tracker has had it."""
        copy_dir = tempfile.mkdtemp(prefix="ntn-artifact-")
        self._copies.add(copy_dir)
        try:
            self._put("log_artifact", shutil.copy(path, os.path.join(copy_dir, name)), name)
        except BaseException:
            shutil.rmtree(copy_dir, ignore_errors=True)
            raise

    def finalize(self, status: str = "finished", end_time: float | None = None) -> None:
        """Queue `finalize`, then wait at most `timeout` seconds for every queued call to be made.

        :raises TimeoutError: calls were still queued when the wait ran out (they are lost)
        """
        self._calls.put(("finalize", (status, end_time)))
        self._calls.put(_DONE)
        waited: list[float] = []

        def join(seconds: float) -> bool:
            waited.append(seconds)
            self._thread.join(seconds)
            return not self._thread.is_alive()

        budget.wait(join, at_most=self.timeout)
        for copy_dir in list(self._copies):  # calls lost to the timeout leave none behind
            shutil.rmtree(copy_dir, ignore_errors=True)
        if self._thread.is_alive():
            left = max(0, self._calls.qsize() - 1)
            why = (
                ""
                if waited[0] >= self.timeout
                else f" (the process's exit budget, {budget.EXIT_TIMEOUT_ENV}, is spent)"
            )
            raise TimeoutError(f"still sending after {waited[0]:g} s{why}; {left} more calls were not made (lost)")
        if self._error is not None and not self._reported:
            raise self._error

    @classmethod
    def cut_off(cls) -> None:
        """The process's exit budget is spent (`contract.Factory.cut_off`): every tracker of this class drops
        the calls still queued, and later ones; a call under way ends on its own (its thread is a daemon)."""
        for tracker in list(Background._live):
            if isinstance(tracker, cls):
                tracker._cut.set()
