"""The training process's side of delivery: one uploader per process, one probe per server, a bounded exit.

- A remote server is probed once per process, in the background. The first run waits for the answer
  at most PROBE_WAIT_S (20 ms: a server on the LAN has answered by then), so a slow link never
  delays training. A 401/403 stops the experiment with a one-line TrackerConfigError: before
  training when the answer came within the wait; else it is printed in one line when it comes, and
  the experiment stops when the next run starts, its runs so far kept in the spool. The runs of a
  server that cannot be reached are only journaled.
- Uploader processes start $NTN_AIM_DELIVERY_INTERVAL seconds (default 10) after the first run, or at
  exit if that comes first, so that a short training never shares its CPUs with them. An uploader
  inherits the environment, which is where it takes the authentication headers from (they are never
  written to the spool), so runs with other credentials get another uploader.
- At exit, runs not yet handed over are, for a remote server, spread over up to REMOTE_UPLOADERS_AT_EXIT
  uploaders. The process waits for its uploaders at most $NTN_AIM_EXIT_TIMEOUT seconds (default 30),
  then ends them, and says in one line how many records stay in the spool and how to upload them.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from ntn.tracking import Redactor, TrackerConfigError, pending

from ntn_tracker_aim import auth, journal
from ntn_tracker_aim.repo import REMOTE_PREFIX, probe_server

EXIT_TIMEOUT_ENV = "NTN_AIM_EXIT_TIMEOUT"
DEFAULT_EXIT_TIMEOUT_S = 30.0
INTERVAL_ENV = "NTN_AIM_DELIVERY_INTERVAL"
DEFAULT_INTERVAL_S = 10.0
# At exit, the runs still waiting for a remote server are spread over up to this many uploaders: aim
# makes ~25 round trips to open a run and as many to fill it, so over a slow link one uploader
# delivering runs one after another would not finish within the exit bound.
REMOTE_UPLOADERS_AT_EXIT = 8

PROBE_WAIT_S = 0.02

Key = tuple[str, tuple[tuple[str, str], ...]]  # (repository, authentication headers)

_probes: dict[Key, Probe] = {}
_journals: list[Path] = []
_repos: set[str] = set()
_uploaders: dict[Key, list[subprocess.Popen]] = {}
_waiting: dict[Key, list[Path]] = {}  # journals not yet handed over
_lock = threading.Lock()
_due = threading.Event()  # set once the first delivery round is due


def _seconds(variable: str, default: float) -> float:
    """A number of seconds >= 0 from the environment variable, else `default`."""
    try:
        value = float(os.environ.get(variable, default))
    except ValueError:
        return default
    return max(0.0, value) if value == value else default  # NaN: the default


def delivery_interval() -> float:
    """Seconds between delivery rounds: $NTN_AIM_DELIVERY_INTERVAL, default 10."""
    return _seconds(INTERVAL_ENV, DEFAULT_INTERVAL_S)


def exit_timeout() -> float:
    """Seconds to wait for delivery at exit: $NTN_AIM_EXIT_TIMEOUT, default 30."""
    return _seconds(EXIT_TIMEOUT_ENV, DEFAULT_EXIT_TIMEOUT_S)


class Probe(threading.Thread):
    """One background request to a remote server: `outcome` is None until it answers, then True
    (reachable), False (unreachable) or the TrackerConfigError of refused credentials. A refusal
    that comes after training went on is said at once, in one line on stderr."""

    def __init__(self, key: Key) -> None:
        super().__init__(daemon=True, name=f"ntn-aim-probe {key[0]}")
        self.repo, self.headers = key[0], dict(key[1])
        self.outcome: bool | TrackerConfigError | None = None
        self._went_on = False  # the first run stopped waiting for the answer
        self._lock = threading.Lock()
        self.start()
        self.join(PROBE_WAIT_S)
        with self._lock:
            self._went_on = self.outcome is None

    def run(self) -> None:
        try:
            probe_server(self.repo, self.headers)
            outcome: bool | TrackerConfigError = True
        except TrackerConfigError as err:
            outcome = err
        except ConnectionError:
            outcome = False
        with self._lock:
            self.outcome = outcome
            late_refusal = self._went_on and isinstance(outcome, TrackerConfigError)
        if late_refusal:
            print(
                f"ntn-tracker-aim: {outcome}. The runs started so far stay in the spool; "
                "the experiment stops when its next run starts.",
                file=sys.stderr,
                flush=True,
            )
        if _due.is_set():  # delivery began while this server was being asked
            _start_uploaders()


def key_of(repo: str) -> Key:
    """Runs go to one uploader per repository and credentials (a remote one's, from the environment).

    :raises TrackerConfigError: malformed authentication variables
    """
    headers = auth.headers_from_env() if repo.startswith(REMOTE_PREFIX) else {}
    return repo, tuple(sorted(headers.items()))


def check(key: Key) -> None:
    """Start probing a remote repository (once per process and credentials); raise its refusal once known.

    :raises TrackerConfigError: the server refused the credentials
    """
    if not key[0].startswith(REMOTE_PREFIX):
        return
    if key not in _probes:
        _probes[key] = Probe(key)  # waits for the answer at most PROBE_WAIT_S
    if isinstance(_probes[key].outcome, TrackerConfigError):
        raise _probes[key].outcome


def _deliverable(key: Key) -> bool:
    """Whether to start an uploader: for a local repository always, for a remote one once its probe said so."""
    return key not in _probes or _probes[key].outcome is True


def _start_uploader(spool: Path) -> subprocess.Popen:
    with open(spool / "uploader.log", "a") as log:  # the uploader writes to its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "ntn_tracker_aim.uploader"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
            start_new_session=True,  # a Ctrl-C of the training process does not cut delivery short
        )


def track(path: Path, key: Key) -> None:
    """A new journal: its uploader takes it when delivery is due, if its repository is reachable."""
    if not _journals:
        atexit.register(_at_exit)
        pending.register(flush)  # a long-lived process (a sweep's worker) waits for delivery through the core
        timer = threading.Timer(delivery_interval(), _start_uploaders)
        timer.daemon = True
        timer.start()
    _journals.append(path)
    _repos.add(key[0])
    with _lock:
        _waiting.setdefault(key, []).append(path)
    if _due.is_set():  # delivery has begun: this run need not wait
        _start_uploaders()


def _start_uploaders(remote_parallel: int = 1) -> None:
    """Hand every waiting journal whose repository is deliverable to an uploader, starting uploaders as
    needed: one per repository and credentials, or up to `remote_parallel` for a remote repository."""
    _due.set()
    with _lock:
        for key in [key for key in _waiting if _deliverable(key)]:
            paths = _waiting.pop(key)
            alive = [u for u in _uploaders.get(key, []) if u.poll() is None]
            wanted = min(len(paths), remote_parallel) if key[0].startswith(REMOTE_PREFIX) else 1
            alive += [_start_uploader(paths[0].parent) for _ in range(max(1, wanted) - len(alive))]
            _uploaders[key] = alive
            for i, path in enumerate(paths):
                _send(alive[i % len(alive)], path)


def _send(uploader: subprocess.Popen, path: Path) -> None:
    _send_line(uploader, str(path.resolve()))


def _send_line(uploader: subprocess.Popen, line: str) -> None:
    try:
        uploader.stdin.write(f"{line}\n")
        uploader.stdin.flush()
    except OSError:  # the uploader died: the journal stays in the spool for `sync`
        pass


def flush(timeout: float = 60.0) -> bool:
    """Wait until every finished run of this process is delivered; False if `timeout` ran out first."""
    deadline = time.monotonic() + timeout
    asked: set[int] = set()
    while time.monotonic() < deadline:
        if not any(journal.finished_and_waiting(p) for p in _journals):
            return True
        _start_uploaders()  # a caller waiting for delivery need not wait for the interval
        for uploader in _all_uploaders():
            if uploader.pid not in asked and uploader.poll() is None:
                asked.add(uploader.pid)
                _send_line(uploader, "")  # deliver now, round after round
        if all(u.poll() is not None for u in _all_uploaders()):
            return False
        time.sleep(0.05)
    return False


def _all_uploaders() -> list[subprocess.Popen]:
    return [uploader for uploaders in _uploaders.values() for uploader in uploaders]


def _at_exit() -> None:
    """Deliver what is left within the exit bound; a Ctrl-C during the wait ends it at once, in one line
    (what is not delivered stays in the spool, as after the bound)."""
    try:
        _deliver_at_exit()
    except KeyboardInterrupt:
        for uploader in _all_uploaders():
            uploader.kill()
        spool = _journals[0].parent
        print(f"ntn-tracker-aim: delivery stopped; undelivered records stay in {spool}/ for ntn-trackers sync",
              file=sys.stderr)  # fmt: skip


def _deliver_at_exit() -> None:
    for probe in _probes.values():
        probe.join()  # an answer comes within the probe's timeout
    _start_uploaders(REMOTE_UPLOADERS_AT_EXIT)  # what has not been handed over yet: deliver now
    deadline = time.monotonic() + exit_timeout()
    for uploader in _all_uploaders():
        try:
            uploader.stdin.close()  # no more runs: deliver and leave
        except OSError:
            pass
    timed_out = False
    for uploader in _all_uploaders():
        try:
            uploader.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            uploader.kill()
            uploader.wait()
            timed_out = True
    records, runs = journal.pending(_journals)
    if records:
        where = ", ".join(sorted(_repos))
        spool = _journals[0].parent
        line = (
            f"ntn-tracker-aim: {records} records of {runs} runs were not delivered to {where} "
            f"({_why_undelivered(spool, timed_out)}); they are kept in "
            f"{spool}/ — upload them with: ntn-trackers sync --spool {spool}"
        )
        print(Redactor().text(line), file=sys.stderr)


def _why_undelivered(spool: Path, timed_out: bool) -> str:
    """Why records stayed in the spool, in a few words."""
    outcomes = [probe.outcome for probe in _probes.values()]
    if any(isinstance(outcome, TrackerConfigError) for outcome in outcomes):
        return "the server refused the credentials"
    if False in outcomes:
        return "the server cannot be reached, or is not an Aim server"
    if timed_out:
        return f"still delivering when the {exit_timeout():g} s exit bound ({EXIT_TIMEOUT_ENV}) ran out"
    try:
        lines = (spool / "uploader.log").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    return f"last error: {lines[-1].split('retrying: ', 1)[-1]}" if lines else "the uploader ended early"
