"""`ntn-trackers reproduce RUN`: re-train a recorded run from its record; do its figures come back?

Only this checkout's code re-trains a run: `experiments.train` of the git checkout of the working directory
(else as this Python imports it), never a module or path a record names (`command.reproduce_with` must
name it). Its `prepare_reproduction(record, device)` returns the provenance a re-run has here and a
function that re-trains the run (its recorded settings, seed and data) and returns its summary. A run
trained with other code is re-trained only with --with-this-checkout; else the `git worktree` command that
gets its code is said. Before training, one
line per difference from the record (code, versions, data, device, machine); after it, each recorded
figure beside the new one. Exit 0: every figure agrees (identical on the same code, data and machine,
else within REL_TOL); 1: one does not; 2: the record cannot be reproduced, said in one line.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from ntn.errors import NtnError
from ntn.tracking.provenance import core_source
from ntn.tracking.redact import Redactor
from ntn.tracking.results import NOT_METRICS, experiment_of, figure_name
from ntn.tracking.tables import printable

REL_TOL = 1e-6  # figures of float64 training on another BLAS, CPU or GPU agree to this, relatively
ABS_TOL = 1e-9  # ... or absolutely, for a figure at zero
NOT_FIGURES = NOT_METRICS - {"best_epoch"}  # the summary's numbers that are not figures; the kept epoch is one
REPRODUCE_WITH = "experiments.train"  # the module that re-trains runs: never one a record names
THIS_CHECKOUT = "--with-this-checkout"


class CannotReproduce(NtnError, ValueError):
    """A recorded run cannot be re-trained here: the message says why, in one line."""


def _short(value: Any) -> str:
    return f"{value[:12]}…" if isinstance(value, str) and len(value) > 16 else str(value)


def _code_differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    lines = []
    if recorded.get("git_commit") != now.get("git_commit"):
        was, is_ = (c.get("git_commit") or c.get("git", "no commit") for c in (recorded, now))
        lines.append(f"code: commit {was} recorded, {is_} now")
    was, is_ = (c.get("git_diff_sha256") if c.get("git_dirty") else None for c in (recorded, now))
    if was != is_:
        shown = [
            f"uncommitted changes (diff SHA-256 {_short(d)})" if d else "no uncommitted changes" for d in (was, is_)
        ]
        lines.append(f"code: {shown[0]} recorded, {shown[1]} now (the recorded diff is the run's git.diff)")
    return lines


def differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per way in which `now` (a re-run's provenance here) differs from `recorded`."""
    lines = _code_differences(recorded.get("code", {}), now.get("code", {}))
    stale = [code.get("ntn_differs_in") for code in (recorded.get("code", {}), now.get("code", {}))]
    if stale[0] != stale[1]:  # an installed ntn that differs from the checkout's core/: what ran is the copy
        was, is_ = (f"an installed ntn differing from core/ in {', '.join(s)}" if s else "core/'s own" for s in stale)
        lines.append(f"code: {was} recorded, {is_} now")
    versions, versions_now = recorded.get("versions", {}), now.get("versions", {})
    for name in sorted(set(versions) & set(versions_now) - {"packages_file", "packages_sha256", "trackers"}):
        if versions[name] != versions_now[name]:
            lines.append(f"versions: {name} {versions[name]} recorded, {versions_now[name]} now")
    if versions.get("packages_sha256") != versions_now.get("packages_sha256"):
        lines.append("versions: the installed packages differ from the recorded list (the run's packages.txt)")
    data, data_now = recorded.get("data", {}), now.get("data", {})
    if data.get("sha256") != data_now.get("sha256"):
        lines.append(
            f"data: {data.get('name')} SHA-256 {_short(data.get('sha256'))} recorded, "
            f"{_short(data_now.get('sha256'))} now ({data_now.get('source')})"
        )
    for key in sorted(set(data) & set(data_now) - {"sha256", "source"}):
        if data[key] != data_now[key]:
            lines.append(f"data: {key} {data[key]} recorded, {data_now[key]} now")
    machine, machine_now = recorded.get("machine", {}), now.get("machine", {})
    if (machine.get("device"), machine.get("device_name")) != (
        machine_now.get("device"),
        machine_now.get("device_name"),
    ):
        was, is_ = (f"{m.get('device')} ({m.get('device_name')})" for m in (machine, machine_now))
        lines.append(f"device: {was} recorded, {is_} now")
    if (machine.get("host"), machine.get("cpu")) != (machine_now.get("host"), machine_now.get("cpu")):
        was, is_ = (f"host {m.get('host')} ({m.get('cpu')})" for m in (machine, machine_now))
        lines.append(f"machine: {was} recorded, {is_} now")
    for name, value in now.get("settings_not_recorded", {}).items():
        lines.append(f"settings: {name} is not in the record (added since); its default {value!r} is used")
    return lines


def figures(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers of a summary that a re-run must give again: losses, r2 or accuracy, best_epoch."""
    return {
        k: v
        for k, v in summary.items()
        if k not in NOT_FIGURES and isinstance(v, int | float) and not isinstance(v, bool)
    }


def agrees(recorded: float, now: float) -> bool:
    if math.isnan(recorded) or math.isnan(now):
        return math.isnan(recorded) and math.isnan(now)
    return math.isclose(now, recorded, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _checkout(directory: Path) -> Path | None:
    """The git checkout that holds `directory` (the nearest folder above it with a .git), or None."""
    return next((d for d in (directory, *directory.parents) if (d / ".git").exists()), None)


def _module(command: dict[str, Any]) -> ModuleType:
    """This checkout's REPRODUCE_WITH: from the git checkout of the working directory when it holds one,
    else as this Python imports it. Nothing the record names is imported: a run file planted in a shared
    TRACKER_DIR, or a run on a shared server, runs no code of its own."""
    recorded = command.get("reproduce_with")
    if recorded != REPRODUCE_WITH:
        raise CannotReproduce(f"it was recorded by {recorded!r}, not {REPRODUCE_WITH}, which re-trains runs here")
    checkout = _checkout(Path.cwd())
    ours = checkout is not None and (checkout / Path(*REPRODUCE_WITH.split("."))).with_suffix(".py").is_file()
    if ours and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        module = importlib.import_module(REPRODUCE_WITH)
    except Exception as err:
        raise CannotReproduce(
            f"{REPRODUCE_WITH} cannot be imported here ({type(err).__name__}: {err}); run this from the checkout "
            "of the experiments"
        ) from None
    where = Path(module.__file__ or "").resolve()
    if ours and not where.is_relative_to(checkout.resolve()):
        raise CannotReproduce(f"{REPRODUCE_WITH} is already imported from {where}, not from the checkout {checkout}")
    return module


def _how_to_get(code: dict[str, Any], rerun: str) -> str:
    """How to check out the code a run was trained with, and `rerun` there, in one line."""
    commit = code.get("git_commit")
    if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{7,64}", commit):  # never a command to paste
        return "its record names no git commit: its code cannot be checked out"
    folder = f"../ntn-{commit[:12]}"
    said = f"git worktree add {folder} {commit}"
    if code.get("git_dirty"):
        said += (
            f", then its uncommitted changes: git -C {folder} apply <the run's git.diff> "
            f"(SHA-256 {_short(code.get('git_diff_sha256'))})"
        )
    return f"{said}; then, from {folder}: PYTHONPATH=core/src {rerun}"


def _own_ids(record: dict[str, Any]) -> list[Any]:
    """The ids that name this record alone, None where it has none: a backend's (an Aim hash, an MLflow run id), then
    its config's run_id."""
    backend_ids = [(record.get(key) or {}).get(k) for key, k in (("aim", "hash"), ("mlflow", "run_id"))]
    return [*backend_ids, (record.get("config") or {}).get("run_id")]


def _ids(record: dict[str, Any]) -> set[Any]:
    """What names a record: its run's name and its own ids (`_own_ids`)."""
    return {record.get("experiment_name"), *_own_ids(record)} - {None}


SHOWN = 10  # runs named where an experiment's name was given


def find(records: list[dict[str, Any]], run: str) -> dict[str, Any]:
    """The one record that `run` names (`_ids`)."""
    found = [r for r in records if run in _ids(r)]
    if not found:
        runs = sorted({str(r.get("experiment_name")) for r in records if experiment_of(r) == run})  # an experiment's
        shown = ", ".join(runs[:SHOWN]) + (f" and {len(runs) - SHOWN} more" if len(runs) > SHOWN else "")
        raise CannotReproduce(f"no recorded run is named {run!r}" + (f"; its runs: {shown}" if runs else ""))
    if len(found) > 1:
        found.sort(key=lambda r: r.get("started", -math.inf), reverse=True)
        shown = ", ".join(_listed(r) for r in found)
        raise CannotReproduce(
            f"{len(found)} recorded runs are named {run!r}, newest first; give one of their ids: {shown}"
        )
    return found[0]


def _listed(record: dict[str, Any]) -> str:
    """A run's id, and when it started where its reader says (`ntn.tracking.readers`)."""
    own = str(next((i for i in _own_ids(record) if i is not None), None))
    started = record.get("started")
    return own if started is None else f"{own} (started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))})"


def reproduce(
    record: dict[str, Any],
    device: str | None = None,
    with_this_checkout: bool = False,
    rerun: str = "this command",
) -> int:
    """Re-train `record` here, print what differs and each figure; the exit code (0, 1; CannotReproduce: 2).
    A run trained with other code (another commit, other uncommitted changes) is re-trained with this
    checkout's only when `with_this_checkout`; else how to get its code is said, and to run `rerun` there, exit 2."""
    from tabulate import tabulate

    recorded = record.get("provenance")
    if not isinstance(recorded, dict):
        raise CannotReproduce("its record holds no provenance (it was recorded before ntn recorded one)")
    expected = figures(record.get("summary") or {})
    if not expected:
        status = (record.get("summary") or {}).get("status")
        raise CannotReproduce(f"its record holds no final figures to compare (status {status})")
    module = _module(recorded.get("command", {}))
    now, train = module.prepare_reproduction(record, device)
    checkout = _checkout(Path(module.__file__).resolve().parent)
    said = f"reproducing {record['experiment_name']} with {module.__name__} of {checkout or module.__file__}"
    print(printable(Redactor().text(said)))
    lines = differences(recorded, now)
    print("\n".join(f"  differs: {line}" for line in lines) or "  same code, packages, data and device")
    sys.stdout.flush()
    stale = now.get("code", {}).get("ntn_differs_in")
    source = core_source(Path(module.__file__).resolve().parent)
    if stale and source is not None:  # the re-run would train that copy's code, not the checkout's
        raise CannotReproduce(
            f"this process's ntn ({now['code'].get('ntn_imported_from')}) is not this checkout's core/ (it differs in "
            f"{', '.join(stale)}); run it with the checkout's: PYTHONPATH={shlex.quote(str(source.parent))} {rerun}"
        )
    if _code_differences(recorded.get("code", {}), now.get("code", {})) and not with_this_checkout:
        raise CannotReproduce(
            f"it was trained with other code; to get that code: {_how_to_get(recorded.get('code', {}), rerun)}; "
            f"or re-train it with this checkout's code: {THIS_CHECKOUT}"
        )
    try:
        summary = train()
    except (ArithmeticError, RuntimeError, ValueError, MemoryError) as err:  # e.g. a model too large for here
        shown = str(err).splitlines()[0] if str(err) else ""
        raise CannotReproduce(f"re-training failed: {type(err).__name__}: {shown}") from None
    got = figures(summary)
    rows, disagree, identical = [], 0, 0
    for name, value in expected.items():
        new = got.get(name)
        ok = new is not None and agrees(float(value), float(new))
        same = new is not None and (new == value or (math.isnan(value) and math.isnan(new)))
        disagree, identical = disagree + (not ok), identical + same
        relative = "-" if new is None or same else f"{abs(new - value) / max(abs(value), abs(new)):.1e}"
        shown = repr(new) if new is not None else "-"
        rows.append(
            [figure_name(name, expected), repr(value), shown, relative, "identical" if same else "yes" if ok else "NO"]
        )
    headers = ["figure", "recorded", "now", "relative difference", "agrees"]
    print(tabulate(rows, headers=headers, disable_numparse=True))
    if disagree:
        print(f"not reproduced: {disagree} of {len(rows)} figures differ by more than {REL_TOL:g} relative")
        return 1
    within = "identical" if identical == len(rows) else f"within {REL_TOL:g} relative ({identical} identical)"
    print(f"reproduced: all {len(rows)} figures {within}")
    return 0


def _command(args: argparse.Namespace) -> int:
    from ntn.tracking.results_cli import read_records

    try:
        # every launch's runs: an earlier one is reproduced by its id
        record = find(read_records(args, newest=False), args.run)
        return reproduce(record, args.device, args.with_this_checkout, _rerun(args))
    except CannotReproduce as err:  # names and ids from files anyone may have written: shown inert
        said = Redactor().text(f"ntn-trackers reproduce: cannot reproduce {args.run}: {err}")
        print(printable(said), file=sys.stderr)
        return 2


def _rerun(args: argparse.Namespace) -> str:
    """This command as it reads the same runs from any directory (another checkout): local sources made absolute."""
    from ntn.tracking.readers import default_source
    from ntn.tracking.results_cli import DEFAULT_DIR, parse_source

    sources = []
    for text in args.sources:
        backend, location = parse_source(text)
        if not location:  # the backend's default as this process sees it (its variables, its working directory)
            backend, location = parse_source(default_source(backend))
        if location and "://" not in location:  # a server's address stays as it is
            location = os.path.abspath(location)
        sources += ["--from", f"{backend}:{location}" if location else backend]
    if args.dir or not args.sources:
        sources += ["--dir", os.path.abspath(args.dir or DEFAULT_DIR)]
    return shlex.join(
        ["ntn-trackers", "reproduce", args.run, *sources, *(["--device", args.device] if args.device else [])]
    )


def register(sub: argparse._SubParsersAction) -> None:
    from ntn.tracking.results_cli import add_sources

    parser = sub.add_parser(
        "reproduce",
        help="re-train a recorded run from its record; exit 0 when its figures come back, 1 when not, 2 when it "
        "cannot be re-trained",
    )
    parser.add_argument("run", metavar="RUN", help="the run's name (e.g. mpo2_experiment_seed0), run_id or backend id")
    add_sources(parser, positional=False)
    parser.add_argument("--device", help="train on this device (default: the recorded one when here, else cpu)")
    parser.add_argument(
        THIS_CHECKOUT,
        action="store_true",
        help="re-train a run recorded with other code (another commit, other uncommitted changes) with this "
        "checkout's code (default: say how to get the recorded code, exit 2)",
    )
    parser.set_defaults(func=_command)
