"""`ntn-trackers reproduce RUN`: re-train a recorded run from its record; do its figures come back?

The run's provenance names the module that trained it (`command.reproduce_with`, e.g. experiments.train);
its `prepare_reproduction(record, device)` returns the provenance a re-run has here and a function that
re-trains the run (its recorded settings, seed and data) and returns its summary. Before training, one
line per difference from the record (code, versions, data, device, machine); after it, each recorded
figure beside the new one. Exit 0: every figure agrees (identical on the same code, data and machine,
else within REL_TOL); 1: one does not; 2: the record cannot be reproduced, said in one line.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from typing import Any

from ntn.tracking.results import NOT_METRICS

REL_TOL = 1e-6  # figures of float64 training on another BLAS, CPU or GPU agree to this, relatively
ABS_TOL = 1e-9  # ... or absolutely, for a figure at zero
NOT_FIGURES = NOT_METRICS - {"best_epoch"}  # the summary's numbers that are not figures; the kept epoch is one


class CannotReproduce(ValueError):
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


def _module(command: dict[str, Any]):
    """The module that re-trains the run: importable as it is, else from the working directory, else from
    where the record says it was."""
    name = command.get("reproduce_with")
    if not isinstance(name, str) or not name:
        raise CannotReproduce("its record names no module to re-train it with (provenance.command.reproduce_with)")
    for path in (None, os.getcwd(), command.get("reproduce_path")):
        if path is not None and path not in sys.path:
            sys.path.insert(0, path)
        try:
            module = importlib.import_module(name)
        except Exception as err:
            if isinstance(err, ModuleNotFoundError) and err.name and name.startswith(err.name):  # not on this path
                continue
            raise CannotReproduce(f"module {name} cannot be imported here ({type(err).__name__}: {err})") from None
        if not callable(getattr(module, "prepare_reproduction", None)):
            raise CannotReproduce(f"module {name} has no prepare_reproduction(record, device)")
        return module
    raise CannotReproduce(
        f"module {name} cannot be imported here; run from the checkout that holds it "
        f"(recorded: {command.get('reproduce_path')})"
    )


def _ids(record: dict[str, Any]) -> set[Any]:
    """What names a record: its run's name, its config's run_id, a backend's id (an Aim hash, an MLflow run id)."""
    backend_ids = [(record.get(key) or {}).get(k) for key, k in (("aim", "hash"), ("mlflow", "run_id"))]
    return {record.get("experiment_name"), (record.get("config") or {}).get("run_id"), *backend_ids} - {None}


def find(records: list[dict[str, Any]], run: str) -> dict[str, Any]:
    """The one record that `run` names (`_ids`)."""
    found = [r for r in records if run in _ids(r)]
    if not found:
        raise CannotReproduce(f"no recorded run is named {run!r}")
    if len(found) > 1:
        shown = ", ".join(str(r.get("aim", {}).get("hash") or r.get("mlflow", {}).get("run_id")) for r in found)
        raise CannotReproduce(f"{len(found)} recorded runs are named {run!r}; give one of their ids: {shown}")
    return found[0]


def reproduce(record: dict[str, Any], device: str | None = None) -> int:
    """Re-train `record` here, print what differs and each figure; the exit code (0, 1; CannotReproduce: 2)."""
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
    print(f"reproducing {record['experiment_name']} with {module.__name__}")
    lines = differences(recorded, now)
    print("\n".join(f"  differs: {line}" for line in lines) or "  same code, packages, data and device")
    sys.stdout.flush()
    summary = train()
    got = figures(summary)
    rows, disagree, identical = [], 0, 0
    for name, value in expected.items():
        new = got.get(name)
        ok = new is not None and agrees(float(value), float(new))
        same = new is not None and (new == value or (math.isnan(value) and math.isnan(new)))
        disagree, identical = disagree + (not ok), identical + same
        relative = "-" if new is None or same else f"{abs(new - value) / max(abs(value), abs(new)):.1e}"
        shown = repr(new) if new is not None else "-"
        rows.append([name, repr(value), shown, relative, "identical" if same else "yes" if ok else "NO"])
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
        return reproduce(find(read_records(args), args.run), args.device)
    except CannotReproduce as err:
        print(f"ntn-trackers reproduce: cannot reproduce {args.run}: {err}", file=sys.stderr)
        return 2


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
    parser.set_defaults(func=_command)
