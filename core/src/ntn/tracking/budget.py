"""The exit budget: the most this process waits, in all its runs together, for its trackers to deliver.

Every wait a tracker makes at a run's end or at the process's exit for what it has not delivered yet (a
`Background` tracker's `finalize`, the aim plugin's exit) draws on one budget per process:
$NTN_TRACKER_EXIT_TIMEOUT seconds (default 60), beside the plugin's own bound for one wait. A wait that
ends with everything delivered costs nothing (a sweep's driver records hundreds of runs, each waiting a
little); one that runs out spends the time it waited. A server that died mid-launch thus holds the process
once, not once per run. When the budget is spent while work is still waiting, every backend this process
used is told, once, through its factory's optional `cut_off()` (`contract.Factory`), so that it stops its
own client's waits; from then on every wait returns at once.

A long-lived process (a sweep's driver, which records every run) asks, with a timeout of its own, whether
what its runs recorded is delivered: `wait_delivered(timeout)`, through each used backend's `wait_delivered`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from ntn.tracking.contract import optional
from ntn.tracking.knobs import seconds

EXIT_TIMEOUT_ENV = "NTN_TRACKER_EXIT_TIMEOUT"
DEFAULT_EXIT_TIMEOUT_S = 60.0

_lock = threading.Lock()
_spent = 0.0  # seconds this process's trackers waited in waits that ran out
_cut = False  # the budget ran out and the backends were told
_used: dict[str, Any] = {}  # name → factory of every backend that built a tracker or prepared in this process


def exit_timeout() -> float:
    """$NTN_TRACKER_EXIT_TIMEOUT, default 60.

    :raises TrackerConfigError: one line naming the variable and its value
    """
    return seconds(EXIT_TIMEOUT_ENV, DEFAULT_EXIT_TIMEOUT_S)


def used(name: str, factory: Any) -> None:
    """The core notes each backend that records or prepares in this process (the ones told when cut off)."""
    _used.setdefault(name, factory)


def left() -> float:
    """Seconds left of the budget (0 once cut off)."""
    return 0.0 if _cut else max(0.0, exit_timeout() - _spent)


def wait(wait_for: Callable[[float], bool], at_most: float = math.inf) -> bool:
    """Call `wait_for(seconds)`: it waits at most `seconds` (the least of `at_most` and what is left of the
    budget) and returns True once done. When it returns False (it ran out), the time it took is spent from
    the budget, and once the budget is spent every used backend is cut off. Returns what `wait_for` returned."""
    global _spent
    started = time.monotonic()
    done = wait_for(min(at_most, left()))
    if not done:
        with _lock:
            _spent += time.monotonic() - started
        if left() <= 0:
            cut_off()
    return done


def cut_off() -> None:
    """Tell every backend used in this process, once, that the core waits no longer (`Factory.cut_off`);
    a backend's failure there is ignored."""
    global _cut
    with _lock:
        if _cut:
            return
        _cut = True
    for factory in list(_used.values()):
        stop = optional(factory, "cut_off")
        if stop is not None:
            with contextlib.suppress(Exception):
                stop()


def wait_delivered(timeout: float) -> bool:
    """Wait, at most `timeout` seconds in all, for every used backend's background delivery
    (`Factory.wait_delivered`); True when each says it is done."""
    deadline = time.monotonic() + timeout
    waits = [w for w in (optional(f, "wait_delivered") for f in list(_used.values())) if w is not None]
    return all([w(max(0.0, deadline - time.monotonic())) for w in waits])
