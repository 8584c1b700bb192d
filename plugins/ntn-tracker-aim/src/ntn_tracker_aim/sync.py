"""`ntn-trackers sync`: upload spooled runs that no live process is delivering."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ntn_tracker_aim import journal
from ntn_tracker_aim.delivery import Delivery
from ntn_tracker_aim.repo import aim_repo_argument

ATTEMPTS = 3  # resuming a run whose lock aim had to force-release can fail once on the server side


def _deliver(path: Path, repo: str | None) -> str | None:
    """Deliver one journal completely and close its run; the last error, if every attempt failed."""
    error = None
    for attempt in range(ATTEMPTS):
        try:
            delivery = Delivery(path, repo)
            if not delivery.step():  # its writer died before finalize: nothing more will come
                delivery.run.close()
            return None
        except Exception as err:
            error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            time.sleep(0.5 * (attempt + 1))
    return error


def sync(spool: Path, repo: str | None = None) -> tuple[int, int, list[str]]:
    """Deliver every abandoned journal in `spool` (to `repo`, else to the repository it names).

    :return: (records delivered, runs completed, one line per journal that could not be delivered)
    """
    records = runs = 0
    problems: list[str] = []
    for path in sorted(spool.glob("*.jsonl")):
        if not journal.is_abandoned(path):
            problems.append(f"{path}: still being written by a running process; skipped")
            continue
        before = journal.delivered(path)
        error = _deliver(path, repo)
        if error:
            problems.append(f"{path}: {error}")
            continue
        records += journal.delivered(path) - before
        runs += 1
        journal.remove(path)
    return records, runs, problems


def _command(args: argparse.Namespace) -> int:
    spool = Path(args.spool) if args.spool else journal.spool_dir()
    if not spool.is_dir():
        print(f"nothing to sync: no spool at {spool}")
        return 0
    repo = aim_repo_argument(args.repo) if args.repo else None
    records, runs, problems = sync(spool, repo)
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
    parser.set_defaults(func=_command)
