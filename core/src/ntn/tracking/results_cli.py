"""`ntn-trackers summary`, `compare` and `plot`: recorded runs, from run files or an Aim repository."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ntn.tracking.discovery import plugins
from ntn.tracking.readers import READERS_GROUP, Record, read_runs
from ntn.tracking.results import Experiment, comparison_rows, group, summary_rows

DEFAULT_DIR = "experiment_logs"


def _sources(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        parser.add_argument("paths", nargs="*", help="run files or directories of run files")
    parser.add_argument("--dir", help=f"a directory of run files (default {DEFAULT_DIR} when nothing else is given)")
    parser.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        metavar="BACKEND:LOCATION",
        help="read runs through an installed plugin's reader (entry-point group ntn.trackers.readers), e.g. "
        "file:experiment_logs, aim:.aim, aim:aim://host:53800, or BACKEND alone for its default location; a plain "
        "path is a run file or directory; "
        "repeatable",
    )


def _source(text: str) -> tuple[str, str]:
    """(backend, location) of a --from value: BACKEND:LOCATION for an installed reader, BACKEND alone for its
    default location (location ""), else a file path.

    :raises ValueError: BACKEND:... names no installed reader (and is no existing path)
    """
    readers = plugins(READERS_GROUP)
    backend, colon, location = text.partition(":")
    if backend in readers:
        return backend, location
    if colon and re.fullmatch(r"[A-Za-z][\w.-]+", backend) and not os.path.exists(text):
        raise ValueError(
            _printable(f"--from {text}: no reader named {backend!r}; installed: {', '.join(sorted(readers))}")
        )
    return "file", text


def _records(args: argparse.Namespace) -> list[Record]:
    """Every readable run; each unreadable source is reported in one line on stderr and skipped."""
    sources = [_source(text) for text in args.sources]
    sources += [("file", p) for p in getattr(args, "paths", []) + ([args.dir] if args.dir else [])]
    batches = [read_runs(backend, location) for backend, location in sources or [("file", DEFAULT_DIR)]]
    records = []
    for found, problems in batches:
        records += found
        for problem in problems:
            print(_printable(f"ntn-trackers: skipped {problem}"), file=sys.stderr)
    if not records:
        raise ValueError("no runs found")
    return records


def _printable(text: Any) -> str:
    """`text` with every control character escaped (\\x1b, \\n, ...): names and errors come from files
    anyone may have written, and a terminal must not act on them."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def _stat_cell(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.4g} ± {stats['std']:.2g}\n[{stats['min']:.4g}, {stats['max']:.4g}]"


def _best_epoch_cell(epochs: list[int]) -> str:
    return f"{statistics.median(epochs):g} ({min(epochs)}–{max(epochs)})" if epochs else "-"


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict) and value and all(isinstance(v, int | float) for v in value.values()):
            flat |= {f"{key}_{k}": v for k, v in value.items()}
        else:
            flat[key] = json.dumps(value) if isinstance(value, list | dict) else value
    return flat


def _emit(rows: list[dict[str, Any]], fmt: str, table: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "csv":
        flat = [_flat(r) for r in rows]
        columns = list(dict.fromkeys(k for r in flat for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)
        print("\n".join(_printable(line) for line in buffer.getvalue().splitlines()))
    else:
        print(table)


def _age(updated: Any) -> str:
    """ ", last record 3 h 5 min ago" for a Unix time; a run that stays running was killed, or still trains."""
    if not isinstance(updated, int | float) or not math.isfinite(updated):
        return ""
    minutes = max(0, int(time.time() - updated)) // 60
    shown = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    return f", last record {shown} ago (a process killed with SIGKILL leaves its run running)"


def _summary(args: argparse.Namespace) -> int:
    experiments = group(_records(args))
    rows = summary_rows(experiments)
    metrics = list(dict.fromkeys(m for exp in experiments.values() for m in exp.metrics))
    if args.metrics:
        metrics = [m for m in args.metrics.split(",") if m]
    table = [
        [_printable(r["experiment"]), r["runs"], r["successful"], len(r["running"]), len(r["failed"])]
        + [_stat_cell(r[m]) if m in r else "-" for m in metrics]
        + [_best_epoch_cell(r["best_epoch"])]
        for r in rows
    ]
    headers = ["experiment", "runs", "ok", "running", "failed", *map(_printable, metrics), "best epoch"]
    text = tabulate(table, headers=headers)
    notes = [f"running: {name}{_age(updated)}" for r in rows for name, updated in r["running"].items()]
    notes += [f"failed: {name}: {error}" for r in rows for name, error in r["failed"].items()]
    notes = [_printable(note) for note in notes]
    _emit(rows, args.format, "\n".join([text, "", *notes]) if notes else text)
    return 0


def _compare(args: argparse.Namespace) -> int:
    experiments = group(_records(args))
    missing = [name for name in args.experiments if name not in experiments]
    if missing:
        raise ValueError(_printable(f"no runs of experiment {missing[0]!r}; found: {', '.join(experiments)}"))
    chosen: list[Experiment] = [experiments[name] for name in args.experiments]
    rows = comparison_rows(chosen)
    ref = chosen[0].name
    headers = [_printable(h) for h in ["metric", *[e.name for e in chosen], *[f"{e.name} − {ref}" for e in chosen[1:]]]]
    table = [
        [_printable(r["metric"])]
        + [f"{r[e.name]['mean']:.4g} ± {r[e.name]['std']:.2g} (n={r[e.name]['n']})" for e in chosen]
        + [f"{r[f'{e.name} - {ref}']['difference']:+.4g} ± {r[f'{e.name} - {ref}']['spread']:.2g}" for e in chosen[1:]]
        for r in rows
    ]
    _emit(rows, args.format, tabulate(table, headers=headers))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from ntn.tracking.plot import plot_curves

    sources = [*args.sources, *getattr(args, "paths", []), *([args.dir] if args.dir else [])] or [DEFAULT_DIR]
    path = plot_curves(group(_records(args)), args.metric, Path(args.output), args.log_y, args.band, ", ".join(sources))
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    summary = sub.add_parser("summary", help="one row per experiment: runs, successes, metrics over seeds")
    _sources(summary)
    summary.add_argument("--format", choices=("table", "csv", "json"), default="table")
    summary.add_argument("--metrics", help="comma-separated summary figures to show in the table (default: all)")
    summary.set_defaults(func=_summary)

    compare = sub.add_parser("compare", help="experiments side by side, with differences of means")
    compare.add_argument("experiments", nargs="+", metavar="EXPERIMENT", help="two or more experiment names")
    _sources(compare, positional=False)
    compare.add_argument("--format", choices=("table", "csv", "json"), default="table")
    compare.set_defaults(func=_compare)

    plot = sub.add_parser("plot", help="learning curves (train solid, validation dashed) to a PNG")
    _sources(plot)
    plot.add_argument("-o", "--output", default="curves.png", help="PNG file to write (default curves.png)")
    plot.add_argument("--metric", default="loss", help="metric to plot, e.g. loss, r2, accuracy (default loss)")
    plot.add_argument("--log-y", action="store_true", help="logarithmic y axis")
    plot.add_argument("--band", action="store_true", help="mean ± std per experiment instead of one line per run")
    plot.set_defaults(func=_plot)
