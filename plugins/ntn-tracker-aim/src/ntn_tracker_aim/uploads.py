"""The training process's side of delivery, in one `Uploads`: uploaders, server probes, a bounded exit.

- A remote server is probed once per process, on a thread of a pool. The first run waits for the answer
  at most PROBE_WAIT_S (20 ms: a server on the LAN has answered by then), so a slow link never
  delays training. A 401/403 stops the experiment with a one-line TrackerConfigError: before
  training when the answer came within the wait; else it is printed in one line when it comes, and
  the experiment stops when the next run starts, its runs so far kept in the spool. The runs of a
  server that cannot be reached are only journaled.
- When the scripts prepare the backends (`AimTracker.prepare`, before they import torch), an uploader
  process starts at once: its import of aim and the opening of the repository (~0.7 s, and ~1 s to make
  a new local one, on otherwise idle CPUs only) overlap the training process's own start-up, and each
  run is opened in Aim as it starts and delivered as soon as it ends, beside the next one's training;
  for a remote server, only when its probe answered within FAST_LINK_S (over a slow link a run takes
  ~50 round trips: its runs are then spread over several uploaders at exit, as below).
  Without `prepare` (the API), uploaders start $NTN_AIM_DELIVERY_INTERVAL seconds (default 10) after
  the first run, or at exit if that comes first. An uploader
  inherits the environment, which is where it takes the authentication headers from (they are never
  written to the spool), so runs with other credentials get another uploader.
- At exit, runs not yet handed over are, for a remote server, spread over up to REMOTE_UPLOADERS_AT_EXIT
  uploaders. The process waits until they have delivered everything, at most $NTN_AIM_EXIT_TIMEOUT
  seconds (default 30), then ends them, and says in one line how many records stay in the spool and how
  to upload them, and why (the probe's answer, the exit bound, or the last failure an uploader reported in
its status file, `journal.uploader_status`). (It does not wait for a remote server's uploader to end: aim's
clean-up takes ~1 s more.)
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

from ntn.tracking import Redactor, TrackerConfigError, pending

from ntn_tracker_aim import auth, journal
from ntn_tracker_aim.repo import REMOTE_PREFIX, probe_server
from ntn_tracker_aim.timings import EXIT_TIMEOUT_ENV, delivery_interval, exit_timeout

# At exit, the runs still waiting for a remote server are spread over up to this many uploaders: aim
# makes ~25 round trips to open a run and as many to fill it, so over a slow link one uploader
# delivering runs one after another would not finish within the exit bound.
REMOTE_UPLOADERS_AT_EXIT = 8

PROBE_WAIT_S = 0.02
FAST_LINK_S = 0.05  # a prepared remote repository whose probe answered within this gets runs as they go

Key = tuple[str, tuple[tuple[str, str], ...]]  # (repository, authentication headers)


def key_of(repo: str) -> Key:
    """Runs go to one uploader per repository and credentials (a remote one's, from the environment).

    :raises TrackerConfigError: malformed authentication variables, or delivery timings
    """
    delivery_interval(), exit_timeout()  # checked here, before training, not in the uploader
    headers = auth.headers_from_env() if repo.startswith(REMOTE_PREFIX) else {}
    return repo, tuple(sorted(headers.items()))


_PROBES = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="ntn-aim-probe")  # each ends within its timeout


def _probe(key: Key) -> bool | TrackerConfigError:
    """True: the server answered; False: it cannot be reached; or the refusal of the credentials."""
    try:
        probe_server(key[0], dict(key[1]))
        return True
    except TrackerConfigError as err:
        return err
    except ConnectionError:
        return False


def _outcome(probe: concurrent.futures.Future) -> bool | TrackerConfigError | None:
    """A probe's answer, or None while it is being asked."""
    return probe.result() if probe.done() else None


def _say_late_refusal(probe: concurrent.futures.Future) -> None:
    """A refusal that comes after training went on is said at once, in one line on stderr."""
    if isinstance(probe.result(), TrackerConfigError):
        print(
            f"ntn-tracker-aim: {probe.result()}. The runs started so far stay in the spool; "
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

    Life cycle: `start` at the first run (a timer for the first delivery round, the exit hook, the core's
    `pending` wait), `stop` at exit (deliver what is left within the exit bound).
    """

    def __init__(self) -> None:
        self.probes: dict[Key, concurrent.futures.Future] = {}
        self.journals: list[Path] = []
        self.repos: set[str] = set()
        self.uploaders: dict[Key, list[subprocess.Popen]] = {}
        self.waiting: dict[Key, list[Path]] = {}  # journals not yet handed over
        self.lock = threading.Lock()
        self.due = threading.Event()  # set once the first delivery round is due
        self.timer: threading.Timer | None = None
        self.prepared: set[Key] = set()
        # prepared repositories whose runs are delivered as they go: local ones, and remote ones whose
        # probe answered within FAST_LINK_S (over a slow link, runs wait to be spread over uploaders at exit)
        self.eager: set[Key] = set()

    def prepare(self, key: Key) -> None:
        """Start the uploader of `key`'s repository now, before any run: it imports aim and opens the
        repository meanwhile, then delivers each run as it ends (a remote one's, once it answered fast)."""
        if self.timer is None:
            self.start()
        with self.lock:
            if not any(u.poll() is None for u in self.uploaders.get(key, [])):
                self.uploaders[key] = [_start_uploader(journal.spool_dir(), key[0])]
        self.prepared.add(key)
        if not key[0].startswith(REMOTE_PREFIX):
            self.eager.add(key)

    def run_ended(self) -> None:
        """A run has ended: the uploaders that deliver as runs go deliver it now (on idle CPUs)."""
        for key in self.eager:
            for uploader in self.uploaders.get(key, []):
                if uploader.poll() is None:
                    _send(uploader, "")

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
            asked = time.monotonic()
            probe = self.probes[key] = _PROBES.submit(_probe, key)
            concurrent.futures.wait([probe], PROBE_WAIT_S)  # a server on the LAN has answered by then
            if not probe.done():
                probe.add_done_callback(_say_late_refusal)
            probe.add_done_callback(lambda probe: self._answered(key, time.monotonic() - asked))
        if isinstance(outcome := _outcome(self.probes[key]), TrackerConfigError):
            raise outcome

    def _answered(self, key: Key, seconds: float) -> None:
        if key in self.prepared and self.probes[key].result() is True and seconds <= FAST_LINK_S:
            self.eager.add(key)
        if self.due.is_set() or key in self.eager:  # delivery began while the server was being asked
            self.hand_over(keys={key})

    def track(self, path: Path, key: Key) -> None:
        """A new journal: its uploader takes it when delivery is due, if its repository is reachable."""
        if self.timer is None:
            self.start()
        self.journals.append(path)
        self.repos.add(key[0])
        with self.lock:
            self.waiting.setdefault(key, []).append(path)
        if self.due.is_set() or key in self.eager:  # delivery has begun: this run need not wait
            self.hand_over(keys={key})

    def _deliverable(self, key: Key) -> bool:
        """For a local repository always, for a remote one once its probe said it is reachable."""
        return key not in self.probes or _outcome(self.probes[key]) is True

    def hand_over(self, remote_parallel: int = 1, keys: set[Key] | None = None) -> None:
        """Hand every waiting journal (of `keys`; default all, and delivery is due from now on) whose
        repository is deliverable to an uploader, starting uploaders as needed: one per repository and
        credentials, or up to `remote_parallel` for a remote repository."""
        if keys is None:
            self.due.set()
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
        if not self.journals:  # prepared, but no run started (bad input after the check): nothing to wait for
            for uploader in self.all_uploaders():
                uploader.kill()
                uploader.wait()
            return
        concurrent.futures.wait(self.probes.values())  # an answer comes within the probe's timeout
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
            time.sleep(0.01)
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
        outcomes = [probe.result() for probe in self.probes.values()]
        if any(isinstance(outcome, TrackerConfigError) for outcome in outcomes):
            return "the server refused the credentials"
        if False in outcomes:
            return "the server cannot be reached, or is not an Aim server"
        error = self._last_uploader_error(spool)
        last = f"last error: {error}" if error else ""
        if timed_out:
            bound = f"still delivering when the {exit_timeout():g} s exit bound ({EXIT_TIMEOUT_ENV}) ran out"
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
