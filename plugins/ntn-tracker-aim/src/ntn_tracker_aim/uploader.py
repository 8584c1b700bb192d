"""The uploader: a separate process that feeds the journals of one training process into Aim.

    python -m ntn_tracker_aim.uploader [REPO]   (started by the tracker; reads journal paths on stdin)

It runs apart from training so that whatever aim does on the network — probing, retrying forever,
blocking when its queue is full, hanging in close() — never holds the training process: the trainer
only appends to journals, and at exit waits a bounded time for this process, then ends it. When its
stdin closes (the training process has exited, however), it delivers what it can and gives up after
the same bound; undelivered journals stay in the spool for `ntn-trackers sync`.

It opens each run in Aim as soon as the run is handed over (at its start, once delivery has begun), so
that aim's ~15 requests to create a run overlap the run's training. It keeps its CPU use out of
training's way: it delivers the records in rounds, at most every $NTN_AIM_DELIVERY_INTERVAL seconds
(default 10) while training runs, at once when training is over, and back to back when its process asks
(an empty line on stdin: sent by the training process as each run ends, `uploads.run_ended`, and by
`uploads.flush`, which a sweep's worker calls at the end), and it runs only on otherwise idle CPUs.
(Delivering continuously — importing aim alone takes 1-2 s of CPU — made a short default experiment
train 3× slower on a 2-core machine, whose torch threads share the cores.)
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path

from ntn.files import write_atomic
from ntn.tracking import Redactor

from ntn_tracker_aim import journal
from ntn_tracker_aim.timings import delivery_interval, exit_timeout

POLL_S = 0.05
RETRY_S = 0.25


_logged: set[str] = set()
_reported: set[Path] = set()  # the status files this uploader wrote


def _report(what: str, err: Exception, path: Path) -> None:
    """A failure: in the status file beside the run's journal (for the training process's exit line), and
    once per distinct failure in the uploader log (not one traceback per retry)."""
    reason = Redactor().text(f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
    status = journal.uploader_status(path.parent, os.getpid())
    try:
        write_atomic(status, json.dumps({"error": f"{what}: {reason}", "time": time.time()}))
        _reported.add(status)
    except OSError:
        pass
    if reason not in _logged:
        _logged.add(reason)
        print(f"[{time.strftime('%H:%M:%S')}] {what}, retrying: {reason}", file=sys.stderr, flush=True)


def _yield_to_training() -> None:
    """Run only on otherwise idle CPUs: delivery can wait, training on the same cores cannot. (With a
    mere nice 19, the time slices this process still gets stall torch's spinning thread barriers:
    training ran 3× slower beside it.)"""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        os.nice(19)


def main() -> int:
    _yield_to_training()
    from ntn_tracker_aim.delivery import Delivery, open_repository  # imports aim (~0.7 s): on idle CPUs only

    warm = None  # the repository given on the command line, opened before the first run (a local one made: ~1 s;
    if len(sys.argv) > 1:  # a remote one connected: the first run's opening took 0.1 s instead of 0.05)
        with contextlib.suppress(Exception):  # delivery opens it again, and says why if it cannot
            warm = open_repository(sys.argv[1])  # noqa: F841  kept open until the end
    incoming: list[Path] = []
    lock = threading.Lock()
    stdin_closed = threading.Event()
    now_asked = threading.Event()  # an empty line: deliver in back-to-back rounds until nothing is left
    woken = threading.Event()  # a line, or the end of stdin: the wait between rounds ends at once

    def read_stdin() -> None:
        for line in sys.stdin:
            if not line.strip():
                now_asked.set()
            else:
                with lock:
                    incoming.append(Path(line.strip()))
            woken.set()
        stdin_closed.set()
        woken.set()
        # aim can hang in a network call that never returns: the bound holds regardless
        threading.Timer(exit_timeout(), lambda: os._exit(3)).start()

    threading.Thread(target=read_stdin, daemon=True).start()
    waiting: dict[Path, float] = {}  # journal → when to try it (again)
    deliveries: dict[Path, Delivery] = {}
    interval = delivery_interval()
    next_round = time.monotonic() + interval

    def open_runs(paths: list[Path]) -> None:
        for path in paths:
            waiting.pop(path, None)
            try:
                deliveries[path] = Delivery(path)
            except FileNotFoundError:  # delivered by another uploader (an earlier attempt's of the same run)
                pass
            except Exception as err:
                _report("cannot open a run", err, path)
                waiting[path] = time.monotonic() + RETRY_S  # tried again in a round

    while True:
        woken.clear()  # what the training process says from here on ends the next wait
        with lock:
            new = [p for p in incoming if p not in deliveries and p not in waiting]
            incoming.clear()
        open_runs(new)  # a run handed over is opened at once: its opening overlaps its training, not its delivery
        if not stdin_closed.is_set() and not now_asked.is_set() and time.monotonic() < next_round:
            woken.wait(POLL_S)
            continue
        next_round = time.monotonic() + interval
        now = time.monotonic()
        open_runs([p for p, when in waiting.items() if when <= now])
        for path, delivery in list(deliveries.items()):
            try:
                finished = delivery.step()
            except FileNotFoundError:  # delivered by another uploader, which removed the journal
                del deliveries[path]
                continue
            except Exception as err:
                _report("delivering a run failed", err, path)
                del deliveries[path]
                waiting[path] = now + RETRY_S
                continue
            if finished:
                journal.remove(path)
                del deliveries[path]
        with lock:
            if stdin_closed.is_set() and not incoming and not deliveries and not waiting:
                for status in _reported:  # everything delivered: no failure to explain
                    status.unlink(missing_ok=True)
                return 0
            if not incoming and not waiting and not any(journal.finished_and_waiting(p) for p in deliveries):
                now_asked.clear()  # only runs still training are left: back to rounds every interval
        woken.wait(POLL_S)


if __name__ == "__main__":
    code = main()
    # aim's clean-up runs at exit all the same (atexit); the objects left are then not collected one by one:
    # 0.13 s less with aim loaded, which a training process waits for at its end (docs/benchmarks.md)
    gc.freeze()
    sys.exit(code)
