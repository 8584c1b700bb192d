"""`ntn-trackers` (also `python -m ntn.tracking`): inspect installed backends and recorded runs, reproduce one.

Plugins add subcommands through the entry-point group `ntn.trackers.commands`: each entry point is a
function `register(subparsers)` that adds its parser and sets `func` (args -> exit code) as a default.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys

from tabulate import tabulate

from ntn.arguments import OneLineParser
from ntn.tracking import reproduce, results_cli
from ntn.tracking.contract import TrackerSelectionError
from ntn.tracking.discovery import installed, load, plugins
from ntn.tracking.redact import Redactor

COMMANDS_GROUP = "ntn.trackers.commands"


def _list(args: argparse.Namespace) -> int:
    rows = []
    for name, ep in sorted(installed().items()):
        try:
            load(name, ep)
            loads = "yes"
        except TrackerSelectionError as err:
            loads = f"no: {err}"
        dist = ep.dist
        rows.append([name, dist.metadata["Name"] if dist else "?", dist.version if dist else "?", ep.value, loads])
    if not rows:
        print(
            "no tracker backends installed; from this repository's root: "
            "pip install -c constraints.txt ./plugins/ntn-tracker-file"
        )
        return 0
    print(tabulate(rows, headers=["backend", "distribution", "version", "entry point", "loads"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ntn-trackers", description="Tracker backends and recorded runs of ntn.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="installed tracker backends and whether they load").set_defaults(func=_list)
    results_cli.register(sub)
    reproduce.register(sub)
    for ep in plugins(COMMANDS_GROUP).values():
        try:
            ep.load()(sub)
        except Exception as err:  # a broken plugin must not take the other commands down
            print(
                f"ntn-trackers: command plugin {ep.name!r} failed to load: {type(err).__name__}: {err}", file=sys.stderr
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # told by the subcommand, whose --help lists its flags
        print(
            f"ntn-trackers {args.command}: unrecognized arguments: {' '.join(unknown)} (see ntn-trackers "
            f"{args.command} --help)",
            file=sys.stderr,
        )
        return 2
    try:
        code = args.func(args)
        if sys.stdout is not None:
            sys.stdout.flush()  # here, so that a reader that went away (`| head`) is met below, not at the exit
        return code
    except (ValueError, OSError) as err:
        if isinstance(err, BrokenPipeError) and _reader_gone():  # else a pipe of its own (a reader's connection)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at the exit: no pipe
            return 128 + signal.SIGPIPE  # as a shell reports a command that a closed pipe ended (1 and 2 say more)
        print(f"ntn-trackers {args.command}: {Redactor().text(str(err))}", file=sys.stderr)
        return 2


def _reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (`| head` that has what it wanted)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no standard output, or no poll here
        return False
