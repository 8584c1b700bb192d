"""SIGINT, SIGTERM and SIGHUP as `Interrupted`, held back while tracker code runs so no record is left half written."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by a signal: SIGINT (Ctrl-C), SIGTERM or SIGHUP."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class Deferral:
    """While tracker code runs (`depth` > 0), a signal's exception waits until it returns: raised between
    two of a tracker's statements (a write done, its bookkeeping not), it would corrupt its records."""

    depth = 0
    pending: Interrupted | None = None

    @classmethod
    def leave(cls) -> None:
        """The end of tracker code (entered with `depth += 1`): raise what arrived meanwhile."""
        cls.depth -= 1
        if cls.depth == 0 and cls.pending is not None:
            pending, cls.pending = cls.pending, None
            raise pending

    @classmethod
    @contextmanager
    def around_trackers(cls) -> Iterator[None]:
        cls.depth += 1
        try:
            yield
        finally:
            cls.leave()


def uninterrupted() -> contextlib.AbstractContextManager[None]:
    """A block that a signal does not cut: its `Interrupted` is raised when the block ends (e.g. from a
    seed's results entry to the end of its run, so that both say the same whenever the signal comes)."""
    return Deferral.around_trackers()


def _interrupt(signum: int, frame: Any) -> None:
    error = Interrupted(signal.Signals(signum).name)
    if Deferral.depth:
        Deferral.pending = Deferral.pending or error
        return
    raise error


def stop_on_signals() -> dict[int, Any]:
    """Turn SIGINT, SIGTERM and SIGHUP into `Interrupted` (a KeyboardInterrupt) in the main thread; a run
    ended that way records status "interrupted". Returns the previous handlers (for `signal.signal`)."""
    names = [name for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    return {getattr(signal, name): signal.signal(getattr(signal, name), _interrupt) for name in names}
