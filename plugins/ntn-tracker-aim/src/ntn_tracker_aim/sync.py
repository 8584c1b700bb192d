"""`ntn-trackers sync`: upload spooled runs that no live process is delivering."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ntn.tracking import TrackerConfigError
from ntn.tracking.knobs import parse_seconds

from ntn_tracker_aim import auth, journal
from ntn_tracker_aim.repo import REMOTE_PREFIX, aim_repo_argument, probe_server

DEFAULT_TIMEOUT_S = 10.0
KILLED = "the training process ended before the run did (killed, e.g. SIGKILL or out of memory)"
ATTEMPTS = 3  # resuming a run whose lock aim had to force-release can fail once on the server side


def _deliver(path: Path, repo: str | None) -> str | None:
    """Deliver one journal completely and close its run; the last error, if every attempt failed."""
    from ntn_tracker_aim.delivery import Delivery  # imports aim

    error = None
    for attempt in range(ATTEMPTS):
        try:
            delivery = Delivery(path, repo)
            if not delivery.step():  # its writer died before finalize: nothing more will come
                ended = {"status": "interrupted", "success": False, "error": KILLED}
                delivery.run["summary"] = delivery.state.summary | ended
                delivery.close(path.stat().st_mtime)  # its last record: as far as it got
            return None
        except Exception as err:
            error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            time.sleep(0.5 * (attempt + 1))
    return error


def _unreachable(repo: str, timeout: float) -> str | None:
    """Why a remote repository cannot take runs now (no answer within `timeout`, refused credentials,
    not an Aim server), in one line; None when it can, or when it is local."""
    if not repo.startswith(REMOTE_PREFIX):
        return None
    try:
        probe_server(repo, auth.headers_from_env(), timeout)
    except (ConnectionError, TrackerConfigError) as err:
        return str(err)
    return None


def sync(
    spool: Path, repo: str | None = None, timeout: float = DEFAULT_TIMEOUT_S, progress=lambda line: None
) -> tuple[int, int, list[str]]:
    """Deliver every abandoned journal in `spool` (to `repo`, else to the repository it names). Each remote
    repository is asked first, once, and given up on when it does not answer within `timeout` seconds.

    :param progress: called with one line per run, as it is synced
    :return: (records delivered, runs completed, one line per journal that could not be delivered)
    """
    records = runs = 0
    problems: list[str] = []
    verdicts: dict[str, str | None] = {}  # repository → why it cannot take runs, once asked
    paths = sorted(spool.glob("*.jsonl"))
    for number, path in enumerate(paths, 1):
        if not journal.is_abandoned(path):
            problems.append(f"{path}: still being written by a running process; skipped")
            continue
        header = journal.read_records(path)[0]
        target = repo or header["repo"]
        if target not in verdicts:
            verdicts[target] = _unreachable(target, timeout)
        if verdicts[target] is not None:
            problems.append(f"{path}: {verdicts[target]}")
            continue
        before = journal.delivered(path)
        error = _deliver(path, repo)
        if error:
            problems.append(f"{path}: {error}")
            continue
        delivered = journal.delivered(path) - before
        progress(f"[{number}/{len(paths)}] {header.get('name', path.stem)}: {delivered} records")
        records += delivered
        runs += 1
        journal.remove(path)
    return records, runs, problems


def _command(args: argparse.Namespace) -> int:
    timeout = parse_seconds(args.timeout, "--timeout")
    spool = Path(args.spool) if args.spool else journal.spool_dir()
    if not spool.is_dir():
        print(f"nothing to sync: no spool at {spool}")
        return 0
    repo = aim_repo_argument(args.repo) if args.repo else None
    records, runs, problems = sync(spool, repo, timeout, progress=lambda line: print(line, flush=True))
    for problem in problems:
        print(f"ntn-trackers sync: {problem}", file=sys.stderr)
    print(f"synced {records} records of {runs} runs from {spool}" + (f" to {repo}" if repo else ""))
    return 1 if problems else 0


def register(sub: argparse._SubParsersAction) -> None:
    """The `sync` subcommand of `ntn-trackers` (entry point in the group ntn.trackers.commands)."""
    parser = sub.add_parser("sync", help="upload runs spooled by the aim backend when the server was unreachable")
    parser.add_argument("--spool", help=f"spool directory (default ${journal.SPOOL_ENV}, else {journal.DEFAULT_SPOOL})")
    parser.add_argument(
        "--repo", help="upload to this repository (a path or aim://host:port) instead of the one recorded"
    )
    parser.add_argument(
        "--timeout",
        default=str(DEFAULT_TIMEOUT_S),
        help=f"seconds to wait for a server's first answer before giving up on it (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.set_defaults(func=_command)
