"""Reading recorded runs back: plugins declare readers in the entry-point group `ntn.trackers.readers`.

A reader is a function `read_runs(source: str) -> (records, problems)`. Each record has the shape of
the seed's run file — `experiment_name`, `config`, `hparams`, `metrics_log` (a list of `{"step": ...,
metric: value}`, step -1 for the initial evaluation) and `summary` (with `status` "running",
"finished", "failed", "interrupted" or "pruned", and for a running run optionally `updated`, the Unix time of its
last record) — and optionally `started`, the Unix time the run started, where the backend keeps it (of the runs
of one name, `summary`, `compare` and `plot` count the one that started last: `results.newest_of_each_name`);
each problem is a one-line description of a source that could not be read.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from ntn.tracking.contract import optional
from ntn.tracking.discovery import Backend, plugins

READERS_GROUP = "ntn.trackers.readers"
Record = dict[str, Any]


def read_runs(backend: str, source: str) -> tuple[list[Record], list[str]]:
    """Records from `source` through the reader of `backend` (e.g. "file" or "aim"); a record whose shape
    is wrong anywhere (`problem_of`) is left out, with a one-line problem instead."""
    readers = plugins(READERS_GROUP)
    if backend not in readers:
        raise ValueError(
            f"reading {backend!r} runs needs the {backend} plugin (this repository's, from its root: pip install -c "
            f"constraints.txt ./plugins/ntn-tracker-{backend})"
        )
    found, problems = readers[backend].load()(source)
    records = []
    for record in found:
        problem = problem_of(record)
        if problem is None:
            records.append(record)
        else:
            name = record.get("experiment_name") if isinstance(record, dict) else None
            problems.append(f"{source}: run {name!r} is malformed ({problem})")
    return records, problems


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    try:
        return _number(value) and math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def problem_of(record: Any) -> str | None:
    """What is wrong with a record's shape, in a few words; None for a well-formed one."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not an object"
    if not isinstance(record.get("experiment_name"), str):
        return "experiment_name is not a string"
    for key in ("config", "hparams", "summary"):
        if not isinstance(record.get(key, {}), dict):
            return f"{key} is not an object"
    log = record.get("metrics_log", [])
    if not isinstance(log, list) or not all(isinstance(m, dict) and _number(m.get("step")) for m in log):
        return "metrics_log is not a list of objects with a numeric step"
    if "started" in record and not _finite(record["started"]):
        return "started is not a finite number"
    summary = record.get("summary", {})
    if not isinstance(summary.get("error", ""), str | type(None)):
        return "summary.error is not a string"
    if "best_epoch" in summary and not isinstance(summary["best_epoch"], int | type(None)):
        return "summary.best_epoch is not an integer"
    if not isinstance(record.get("config", {}).get("experiment", ""), str | type(None)):
        return "config.experiment is not a string"
    return None


def closing_line(backends: Sequence[Backend]) -> str:
    """The scripts' last line: where the backends keep the runs (each factory's `where()`, else its name),
    and the command that reads them back through each backend with a reader, from its factory's `source()`
    (else its default location: `--from NAME`)."""
    where = ", ".join(_said(b, "where") or b.name for b in backends) or "no tracker"
    readers = plugins(READERS_GROUP)
    cli = _cli()
    commands = [f"{cli} summary --from {_said(b, 'source') or b.name}" for b in backends if b.name in readers]
    return f"runs recorded by {where}" + (f"; compare them: {' or '.join(commands)}" if commands else "")


def _cli() -> str:
    """How to call this Python's `ntn-trackers` from here: by name where PATH finds it (an activated venv), else by
    its path (`.venv/bin/ntn-trackers`: a script run with PYTHON=.venv/bin/python, as the quick start does)."""
    own = os.path.join(os.path.dirname(sys.executable), "ntn-trackers")
    found = shutil.which("ntn-trackers")
    if not os.path.exists(own) or (found is not None and os.path.samefile(found, own)):
        return "ntn-trackers"
    try:
        relative = os.path.relpath(own)
    except OSError:  # the working directory is gone
        relative = own
    return shlex.quote(relative if not relative.startswith("..") else own)  # pasted into a shell as it is


def default_source(name: str) -> str:
    """The `--from` value for backend `name`'s default location here: its tracker's `source()` (e.g.
    "aim:/home/me/exp"), else `name` alone."""
    from ntn.tracking.discovery import installed

    try:
        source = optional(installed()[name].load(), "source")
        return source() if source is not None else name
    except Exception:  # no such tracker (a reader alone), or one that cannot load or say: its name
        return name


def _said(backend: Backend, method: str) -> str:
    said = optional(backend.factory, method)
    return said() if said is not None else ""
