"""The training process's side of delivery, in one `Uploads`: uploaders, server probes, a bounded exit.

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
  uploaders. The process waits until they have delivered everything, at most $NTN_AIM_EXIT_TIMEOUT
  seconds (default 30), then ends them, and says in one line how many records stay in the spool and how
  to upload them. (It does not wait for a remote server's uploader to end: aim's clean-up takes ~1 s more.)
"""

from __future__ import annotations

import atexit
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ntn.tracking import Redactor, TrackerConfigError, pending, seconds

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


def delivery_interval() -> float:
    """Seconds between delivery rounds: $NTN_AIM_DELIVERY_INTERVAL, default 10."""
    return seconds(INTERVAL_ENV, DEFAULT_INTERVAL_S)


def exit_timeout() -> float:
    """Seconds to wait for delivery at exit: $NTN_AIM_EXIT_TIMEOUT, default 30."""
    return seconds(EXIT_TIMEOUT_ENV, DEFAULT_EXIT_TIMEOUT_S)


def key_of(repo: str) -> Key:
    """Runs go to one uploader per repository and credentials (a remote one's, from the environment).

    :raises TrackerConfigError: malformed authentication variables, or delivery timings
    """
    delivery_interval(), exit_timeout()  # checked here, before training, not in the uploader
    headers = auth.headers_from_env() if repo.startswith(REMOTE_PREFIX) else {}
    return repo, tuple(sorted(headers.items()))


class Probe(threading.Thread):
    """One background request to a remote server: `outcome` is None until it answers, then True
    (reachable), False (unreachable) or the TrackerConfigError of refused credentials. A refusal
    that comes after training went on is said at once, in one line on stderr; `answered` is called
    with the outcome."""

    def __init__(self, key: Key, answered: Callable[[], None]) -> None:
        super().__init__(daemon=True, name=f"ntn-aim-probe {key[0]}")
        self.repo, self.headers, self.answered = key[0], dict(key[1]), answered
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
        self.answered()


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


def _send(uploader: subprocess.Popen, line: str) -> None:
    """One line to an uploader: a journal's path, or "" for "deliver now"."""
    try:
        uploader.stdin.write(f"{line}\n")
        uploader.stdin.flush()
    except OSError:  # the uploader died: the journal stays in the spool for `sync`
        pass


class Uploads:
    """This process's runs on their way to Aim: probes, uploader processes, and what waits for them.

    Life cycle: `start` at the first run (a timer for the first delivery round, the exit hook, the core's
    `pending` wait), `stop` at exit (deliver what is left within the exit bound).
    """

    def __init__(self) -> None:
        self.probes: dict[Key, Probe] = {}
        self.journals: list[Path] = []
        self.repos: set[str] = set()
        self.uploaders: dict[Key, list[subprocess.Popen]] = {}
        self.waiting: dict[Key, list[Path]] = {}  # journals not yet handed over
        self.lock = threading.Lock()
        self.due = threading.Event()  # set once the first delivery round is due
        self.timer: threading.Timer | None = None

    def start(self) -> None:
        atexit.register(self.stop)
        pending.register(self.flush)  # a long-lived process (a sweep's worker) waits for delivery through the core
        self.timer = threading.Timer(delivery_interval(), self.hand_over)
        self.timer.daemon = True
        self.timer.start()

    def check(self, key: Key) -> None:
        """Start probing a remote repository (once per process and credentials); raise its refusal once known.

        :raises TrackerConfigError: the server refused the credentials
        """
        if not key[0].startswith(REMOTE_PREFIX):
            return
        if key not in self.probes:
            self.probes[key] = Probe(key, self._answered)  # waits for the answer at most PROBE_WAIT_S
        if isinstance(self.probes[key].outcome, TrackerConfigError):
            raise self.probes[key].outcome

    def _answered(self) -> None:
        if self.due.is_set():  # delivery began while a server was being asked
            self.hand_over()

    def track(self, path: Path, key: Key) -> None:
        """A new journal: its uploader takes it when delivery is due, if its repository is reachable."""
        if self.timer is None:
            self.start()
        self.journals.append(path)
        self.repos.add(key[0])
        with self.lock:
            self.waiting.setdefault(key, []).append(path)
        if self.due.is_set():  # delivery has begun: this run need not wait
            self.hand_over()

    def _deliverable(self, key: Key) -> bool:
        """For a local repository always, for a remote one once its probe said it is reachable."""
        return key not in self.probes or self.probes[key].outcome is True

    def hand_over(self, remote_parallel: int = 1) -> None:
        """Hand every waiting journal whose repository is deliverable to an uploader, starting uploaders as
        needed: one per repository and credentials, or up to `remote_parallel` for a remote repository."""
        self.due.set()
        with self.lock:
            for key in [key for key in self.waiting if self._deliverable(key)]:
                paths = self.waiting.pop(key)
                alive = [u for u in self.uploaders.get(key, []) if u.poll() is None]
                wanted = min(len(paths), remote_parallel) if key[0].startswith(REMOTE_PREFIX) else 1
                alive += [_start_uploader(paths[0].parent) for _ in range(max(1, wanted) - len(alive))]
                self.uploaders[key] = alive
                for i, path in enumerate(paths):
                    _send(alive[i % len(alive)], str(path.resolve()))

    def all_uploaders(self) -> list[subprocess.Popen]:
        return [uploader for uploaders in self.uploaders.values() for uploader in uploaders]

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every finished run of this process is delivered; False if `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        asked: set[int] = set()
        while time.monotonic() < deadline:
            if not any(journal.finished_and_waiting(p) for p in self.journals):
                return True
            self.hand_over()  # a caller waiting for delivery need not wait for the interval
            for uploader in self.all_uploaders():
                if uploader.pid not in asked and uploader.poll() is None:
                    asked.add(uploader.pid)
                    _send(uploader, "")  # deliver now, round after round
            if all(u.poll() is not None for u in self.all_uploaders()):
                return False
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Deliver what is left within the exit bound; a Ctrl-C during the wait ends it at once, in one line
        (what is not delivered stays in the spool, as after the bound)."""
        if self.timer is not None:
            self.timer.cancel()
        try:
            self._deliver_at_exit()
        except KeyboardInterrupt:
            for uploader in self.all_uploaders():
                uploader.kill()
            spool = self.journals[0].parent
            print(f"ntn-tracker-aim: delivery stopped; undelivered records stay in {spool}/ for ntn-trackers sync",
                  file=sys.stderr)  # fmt: skip

    def _deliver_at_exit(self) -> None:
        for probe in self.probes.values():
            probe.join()  # an answer comes within the probe's timeout
        self.hand_over(REMOTE_UPLOADERS_AT_EXIT)  # what has not been handed over yet: deliver now
        deadline = time.monotonic() + exit_timeout()
        for uploader in self.all_uploaders():
            try:
                uploader.stdin.close()  # no more runs: deliver and leave
            except OSError:
                pass
        # Wait until every run is delivered, and until each local repository's uploader has ended (it writes
        # the repository until then). A remote server's uploader, its runs delivered and acknowledged, ends on
        # its own: aim's clean-up takes it another second (aim's heartbeat thread sleeps in 1 s steps).
        local = [u for key, us in self.uploaders.items() if not key[0].startswith(REMOTE_PREFIX) for u in us]
        while time.monotonic() < deadline and self._busy(local):
            time.sleep(0.05)
        timed_out = self._busy(local)
        if timed_out:
            for uploader in self.all_uploaders():
                uploader.kill()
                uploader.wait()
        records, runs = journal.pending(self.journals)
        if records:
            where = ", ".join(sorted(self.repos))
            spool = self.journals[0].parent
            line = (
                f"ntn-tracker-aim: {records} records of {runs} runs were not delivered to {where} "
                f"({self._why_undelivered(spool, timed_out)}); they are kept in "
                f"{spool}/ — upload them with: ntn-trackers sync --spool {spool}"
            )
            print(Redactor().text(line), file=sys.stderr)

    def _busy(self, local: list[subprocess.Popen]) -> bool:
        """Whether an uploader is still at work: a local repository's, or any while runs wait for delivery."""
        if any(u.poll() is None for u in local):
            return True
        waiting = any(journal.in_delivery(p) for p in self.journals)
        return waiting and any(u.poll() is None for u in self.all_uploaders())

    def _why_undelivered(self, spool: Path, timed_out: bool) -> str:
        """Why records stayed in the spool, in a few words."""
        outcomes = [probe.outcome for probe in self.probes.values()]
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


UPLOADS = Uploads()  # the one of this process
flush = UPLOADS.flush
