"""Work that trackers finish after their hooks return, such as delivering runs to a server.

A plugin that delivers in the background registers a function that waits for it; a long-lived process
that trains run after run (a sweep's worker) calls `wait` before it reports its runs recorded, where a
short process would rely on the plugin's own wait at exit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_waits: list[Callable[[float], bool]] = []


def register(wait_for: Callable[[float], bool]) -> None:
    """Register `wait_for(timeout)`: returns True once everything recorded so far is delivered, False when
    `timeout` seconds ran out (or delivery cannot go on) first."""
    if wait_for not in _waits:
        _waits.append(wait_for)


def wait(timeout: float) -> bool:
    """Wait, at most `timeout` seconds in all, for every registered tracker's background work; True if done."""
    deadline = time.monotonic() + timeout
    return all([wait_for(max(0.0, deadline - time.monotonic())) for wait_for in _waits])
