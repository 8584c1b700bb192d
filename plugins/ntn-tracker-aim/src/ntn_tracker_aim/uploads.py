"""The training process's side of delivery, in one `Uploads`: uploaders, server probes, a bounded exit.

- A remote server is probed once per process, on a daemon thread, from `prepare` on (the scripts
  prepare before they import torch: the answer comes while the process starts up) or from the first
  run. The first run waits for the answer at most PROBE_WAIT_S more (20 ms: a server on the LAN has
  answered by then), so a slow link never delays training. A 401/403 stops the experiment with a
  one-line TrackerConfigError: before training when the answer came by then; else it is printed in one
  line when it comes, and the experiment stops when the next run starts, its runs so far kept in the
  spool. The runs of a server that cannot be reached are only journaled.
- One way of delivering, for every process: the uploader of a repository starts before the first run
  (`AimTracker.prepare`, which the scripts call before they import torch, so that its import of aim and
  the opening of the repository, ~0.7 s, overlap the process's own start-up), or at the first run when
  nothing prepared it. Each run is handed over as it starts (the uploader opens it in Aim while it trains)
  and delivered as it ends, on idle CPUs; for a remote server, once its probe answered within FAST_LINK_S.
  Over a slower link a run takes ~50 round trips: its runs are kept for the exit, and spread there over up
  to REMOTE_UPLOADERS_AT_EXIT uploaders. An uploader inherits the environment, which is where it takes the
  authentication headers from (they are never written to the spool), so runs with other credentials get
  another uploader.
- At exit the process waits until the uploaders have delivered everything, at most $NTN_AIM_EXIT_TIMEOUT
  seconds (default 30) and no longer than what is left of the process's exit budget
  (`ntn.tracking.budget`, shared with the other trackers); then it ends them, and says in one line how many
  records stay in the spool and how to upload them, and why (the probe's answer, the bound, or the last
  failure an uploader reported in its status file, `journal.uploader_status`). (It does not wait for a
  remote server's uploader to end: aim's clean-up takes ~1 s more.)
"""

from __future__ import annotations

import atexit
import concurrent.futures
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

from ntn.tracking import Redactor, TrackerConfigError, budget

from ntn_tracker_aim import auth, journal
from ntn_tracker_aim.repo import REMOTE_PREFIX, probe_server
from ntn_tracker_aim.timings import EXIT_TIMEOUT_ENV, delivery_interval, exit_timeout

# At exit, the runs still waiting for a remote server are spread over up to this many uploaders: aim
# makes ~25 round trips to open a run and as many to fill it, so over a slow link one uploader
# delivering runs one after another would not finish within the exit bound.
REMOTE_UPLOADERS_AT_EXIT = 8

PROBE_WAIT_S = 0.02
FAST_LINK_S = 0.05  # a remote repository whose probe answered within this gets runs as they go

Key = tuple[str, tuple[tuple[str, str], ...]]  # (repository, authentication headers)


def key_of(repo: str) -> Key:
    """Runs go to one uploader per repository and credentials (a remote one's, from the environment).

    :raises TrackerConfigError: malformed authentication variables, or delivery timings
    """
    delivery_interval(), exit_timeout()  # checked here, before training, not in the uploader
    headers = auth.headers_from_env() if repo.startswith(REMOTE_PREFIX) else {}
    return repo, tuple(sorted(headers.items()))


class Answer(NamedTuple):
    """A probe's answer: True (the server answered), False (it cannot be reached) or the refusal of the
    credentials; and how many seconds it took."""

    outcome: bool | TrackerConfigError
    seconds: float


def _probe(key: Key) -> Answer:
    asked = time.monotonic()
    try:
        probe_server(key[0], dict(key[1]))
        outcome: bool | TrackerConfigError = True
    except TrackerConfigError as err:
        outcome = err
    except ConnectionError:
        outcome = False
    return Answer(outcome, time.monotonic() - asked)


def _answer(probe: concurrent.futures.Future, key: Key) -> None:
    """Ask the server (on a daemon thread: a process that ends before its first run does not wait for it)."""
    probe.set_running_or_notify_cancel()
    try:
        probe.set_result(_probe(key))
    except BaseException as err:  # an answer of any kind, so that whoever waits for it is not left waiting
        probe.set_exception(err)


def _outcome(probe: concurrent.futures.Future) -> bool | TrackerConfigError | None:
    """A probe's answer, or None while it is being asked."""
    return probe.result().outcome if probe.done() else None


def _say_late_refusal(probe: concurrent.futures.Future) -> None:
    """A refusal that comes after training went on is said at once, in one line on stderr."""
    if isinstance(probe.result().outcome, TrackerConfigError):
        print(
            f"ntn-tracker-aim: {probe.result().outcome}. The runs started so far stay in the spool; "
            "the experiment stops when its next run starts.",
            file=sys.stderr,
            flush=True,
        )


def _start_uploader(spool: Path, repo: str | None = None) -> subprocess.Popen:
    """An uploader process; given `repo`, it opens that repository as soon as it has imported aim."""
    with open(spool / "uploader.log", "a") as log:  # the uploader writes to its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "ntn_tracker_aim.uploader", *([repo] if repo else [])],
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

    Life cycle: an uploader per repository and credentials from `prepare` (or the first run) on, each run
    handed over as it starts and delivered as it ends (`run_ended`), `stop` at exit (deliver what is left
    within the exit bound); `flush` for a caller that waits for delivery (`AimTracker.wait_delivered`).
    """

    def __init__(self) -> None:
        self.probes: dict[Key, concurrent.futures.Future] = {}
        self.checked: set[Key] = set()  # the repositories and credentials a run has started with
        self.probing = threading.Lock()  # for `probes` and `checked`
        self.journals: list[Path] = []
        self.repos: set[str] = set()
        self.uploaders: dict[Key, list[subprocess.Popen]] = {}
        self.waiting: dict[Key, list[Path]] = {}  # journals not yet handed over
        self.lock = threading.Lock()
        self.cut = threading.Event()  # the core waits no longer (`AimTracker.cut_off`)
        atexit.register(self.stop)

    def prepare(self, key: Key) -> None:
        """Start the uploader of `key`'s repository now, unless one runs: it imports aim and opens the
        repository meanwhile; and a remote repository's probe."""
        self.probe(key)
        with self.lock:
            if not any(u.poll() is None for u in self.uploaders.get(key, [])):
                self.uploaders[key] = [_start_uploader(journal.spool_dir(), key[0])]

    def _as_they_go(self, key: Key) -> bool:
        """Whether `key`'s runs are handed over as they start: a local repository's, and a remote one's once
        its probe answered within FAST_LINK_S (over a slower link they wait for the exit, to be spread)."""
        if key not in self.probes:
            return True
        probe = self.probes[key]
        return probe.done() and probe.result().outcome is True and probe.result().seconds <= FAST_LINK_S

    def run_ended(self) -> None:
        """A run has ended: the uploaders of runs handed over as they go deliver it now (on idle CPUs)."""
        with self.lock:
            uploaders = [u for key, us in self.uploaders.items() if self._as_they_go(key) for u in us]
        for uploader in uploaders:
            if uploader.poll() is None:
                _send(uploader, "")

    def probe(self, key: Key) -> concurrent.futures.Future | None:
        """Start probing a remote repository's server, once per process and credentials (`prepare` does, so
        that the answer comes while the process starts up); its answer to come, None for a local repository."""
        if not key[0].startswith(REMOTE_PREFIX):
            return None
        with self.probing:
            if key not in self.probes:
                probe = self.probes[key] = concurrent.futures.Future()
                probe.add_done_callback(lambda probe: self.hand_over(keys={key}) if self._as_they_go(key) else None)
                threading.Thread(target=_answer, args=(probe, key), name="ntn-aim-probe", daemon=True).start()
            return self.probes[key]

    def check(self, key: Key) -> None:
        """Before a run: raise the server's refusal once known. The first run of a repository and credentials
        waits for the answer at most PROBE_WAIT_S; an answer that comes later is said when it comes.

        :raises TrackerConfigError: the server refused the credentials
        """
        probe = self.probe(key)
        if probe is None:
            return
        with self.probing:  # runs may start from several threads: one of them is the first
            first = key not in self.checked
            self.checked.add(key)
        if first:
            concurrent.futures.wait([probe], PROBE_WAIT_S)  # a server on the LAN has answered by then
            if not probe.done():  # this run goes on, journaled; a refusal is said once, when it comes
                probe.add_done_callback(_say_late_refusal)
                return
        if isinstance(outcome := _outcome(probe), TrackerConfigError):
            raise outcome

    def track(self, path: Path, key: Key) -> None:
        """A new journal: handed over at once where runs go as they start (its uploader started if none runs)."""
        self.prepare(key)
        self.journals.append(path)
        self.repos.add(key[0])
        with self.lock:
            self.waiting.setdefault(key, []).append(path)
        if self._as_they_go(key):
            self.hand_over(keys={key})

    def _deliverable(self, key: Key) -> bool:
        """For a local repository always, for a remote one once its probe said it is reachable."""
        return key not in self.probes or _outcome(self.probes[key]) is True

    def hand_over(self, remote_parallel: int = 1, keys: set[Key] | None = None) -> None:
        """Hand every waiting journal (of `keys`; default all) whose repository is deliverable to an
        uploader, starting uploaders as needed: one per repository and credentials, or up to
        `remote_parallel` for a remote repository."""
        with self.lock:
            for key in [key for key in self.waiting if self._deliverable(key) and (keys is None or key in keys)]:
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
        while time.monotonic() < deadline and not self.cut.is_set():
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
        try:
            self._deliver_at_exit()
        except KeyboardInterrupt:
            for uploader in self.all_uploaders():
                uploader.kill()
            spool = self.journals[0].parent
            print(f"ntn-tracker-aim: delivery stopped; undelivered records stay in {spool}/ for ntn-trackers sync",
                  file=sys.stderr)  # fmt: skip

    def _deliver_at_exit(self) -> None:
        if not self.journals:  # prepared, but no run started (bad input after the check): nothing to wait for
            for uploader in self.all_uploaders():
                uploader.kill()
                uploader.wait()
            return
        concurrent.futures.wait(self._probes_of_runs())  # an answer comes within the probe's timeout
        self.hand_over(REMOTE_UPLOADERS_AT_EXIT)  # what has not been handed over yet: deliver now
        for uploader in self.all_uploaders():
            try:
                uploader.stdin.close()  # no more runs: deliver and leave
            except OSError:
                pass
        # Wait until every run is delivered, and until each local repository's uploader has ended (it writes
        # the repository until then). A remote server's uploader, its runs delivered and acknowledged, ends on
        # its own: aim's clean-up takes it another second (aim's heartbeat thread sleeps in 1 s steps).
        local = [u for key, us in self.uploaders.items() if not key[0].startswith(REMOTE_PREFIX) for u in us]

        def delivered(seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and self._busy(local):
                time.sleep(0.01)
            return not self._busy(local)

        bound = exit_timeout()
        timed_out = not budget.wait(delivered, at_most=bound)
        cut_short = timed_out and (budget.left() == 0 or self.cut.is_set())
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
                f"({self._why_undelivered(spool, timed_out, cut_short)}); they are kept in "
                f"{spool}/ — upload them with: ntn-trackers sync --spool {spool}"
            )
            print(Redactor().text(line), file=sys.stderr)

    def _probes_of_runs(self) -> list[concurrent.futures.Future]:
        """The probes of the repositories and credentials runs started with (not one `prepare` asked for with
        credentials that changed before the first run)."""
        return [self.probes[key] for key in self.checked]

    def _busy(self, local: list[subprocess.Popen]) -> bool:
        """Whether an uploader is still at work: a local repository's, or any while runs wait for delivery."""
        if any(u.poll() is None for u in local):
            return True
        waiting = any(journal.in_delivery(p) for p in self.journals)
        return waiting and any(u.poll() is None for u in self.all_uploaders())

    def _why_undelivered(self, spool: Path, timed_out: bool, cut_short: bool) -> str:
        """Why records stayed in the spool, in a few words."""
        outcomes = [probe.result().outcome for probe in self._probes_of_runs()]
        if any(isinstance(outcome, TrackerConfigError) for outcome in outcomes):
            return "the server refused the credentials"
        if False in outcomes:
            return "the server cannot be reached, or is not an Aim server"
        error = self._last_uploader_error(spool)
        last = f"last error: {error}" if error else ""
        if timed_out:
            bound = f"still delivering when the {exit_timeout():g} s exit bound ({EXIT_TIMEOUT_ENV}) ran out"
            if cut_short:
                bound = f"still delivering when the process's exit budget ({budget.EXIT_TIMEOUT_ENV}) was spent"
            return f"{bound}; {last}" if last else bound
        return last or "the uploader ended early"

    def _last_uploader_error(self, spool: Path) -> str | None:
        """The last failure this process's uploaders reported in their status files, which it removes."""
        reports = []
        for uploader in self.all_uploaders():
            path = journal.uploader_status(spool, uploader.pid)
            try:
                reports.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
            path.unlink(missing_ok=True)
        return max(reports, key=lambda report: report["time"])["error"] if reports else None


UPLOADS = Uploads()  # the one of this process
flush = UPLOADS.flush
