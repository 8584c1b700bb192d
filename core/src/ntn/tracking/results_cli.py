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
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ntn.tracking.discovery import plugins
from ntn.tracking.readers import READERS_GROUP, Record, read_runs
from ntn.tracking.results import (
    Experiment,
    comparison_rows,
    differing_settings,
    errors_of,
    experiment_of,
    group,
    newest_of_each_name,
    quality_of,
    ranked,
    run_status,
    seeds_rows,
    summary_rows,
)
from ntn.tracking.tables import Column, fit, printable, width, wrapped

DEFAULT_DIR = "experiment_logs"


def add_sources(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        parser.add_argument(
            "paths",
            nargs="*",
            metavar="NAME_OR_PATH",
            help="experiments or sweeps to show (by name), or run files and directories of run files",
        )
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


def parse_source(text: str) -> tuple[str, str]:
    """(backend, location) of a --from value: BACKEND:LOCATION for an installed reader, BACKEND alone for its
    default location (location ""), else a file path.

    :raises ValueError: BACKEND or BACKEND:... names no installed reader (and is no existing path)
    """
    readers = plugins(READERS_GROUP)
    backend, _, location = text.partition(":")
    if backend in readers:
        return backend, location
    if re.fullmatch(r"[A-Za-z][\w.-]+", backend) and not os.path.exists(text):
        raise ValueError(
            printable(
                f"--from {text}: no reader named {backend!r}; installed: {', '.join(sorted(readers))}; "
                "nor is it a file or directory"
            )
        )
    return "file", text


def _positional(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The positional arguments as (paths, names): what exists is a run file or directory, the rest names
    experiments or sweeps."""
    positional = getattr(args, "paths", [])
    return [p for p in positional if os.path.exists(p)], [p for p in positional if not os.path.exists(p)]


def read_records(args: argparse.Namespace, experiments: list[str] | None = None, newest: bool = True) -> list[Record]:
    """Every readable run, of the experiments or sweeps named if any (or of `experiments`), each run name and
    settings once when `newest` (its newest launch, said in one line on stderr when others were left out), and
    of the statuses asked for (--status); each unreadable source is reported in one line on stderr and skipped.

    :raises ValueError: no runs, a name that matches no experiment and no sweep, an experiment of `experiments`
        with no runs, or a status no run holds
    """
    paths, names = _positional(args)
    sources = [parse_source(text) for text in args.sources]
    sources += [("file", p) for p in paths] + ([("file", args.dir)] if args.dir else [])
    batches = [read_runs(backend, location) for backend, location in sources or [("file", DEFAULT_DIR)]]
    records = []
    for found, problems in batches:
        records += found
        for problem in problems:
            print(printable(f"ntn-trackers: skipped {problem}"), file=sys.stderr)
    if not records:
        raise ValueError("no runs found")
    records = _named(records, names) if names else records
    if experiments is not None:
        found = sorted({experiment_of(r) for r in records})
        missing = [name for name in experiments if name not in found]
        if missing:
            raise ValueError(printable(f"no runs of experiment {missing[0]!r}; found: {', '.join(found)}"))
        records = [r for r in records if experiment_of(r) in experiments]
    return _with_status(_newest(records) if newest else records, getattr(args, "status", None))


def _newest(records: list[Record]) -> list[Record]:
    """Each run once, its newest launch (`newest_of_each_name`); what was left out, said in one line on stderr."""
    newest = newest_of_each_name(records)
    left_out = [_runs(newest.earlier, "of an earlier launch", "of earlier launches")] if newest.earlier else []
    left_out += [_runs(newest.read_again, "read again from another source")] if newest.read_again else []
    if left_out:
        print(f"ntn-trackers: each run counted once, its newest launch; left out {' and '.join(left_out)}",
              file=sys.stderr)  # fmt: skip
    return newest.records


def _runs(count: int, one: str, many: str | None = None) -> str:
    return f"1 run {one}" if count == 1 else f"{count} runs {many or one}"


def _with_status(records: list[Record], wanted: str | None) -> list[Record]:
    """The runs whose status (`run_status`) is one of `wanted` (comma-separated; None or "all": every run).

    :raises ValueError: a status that no run holds, naming those they hold, with their counts
    """
    statuses = [s.strip() for s in (wanted or "all").split(",") if s.strip()]
    if not statuses or "all" in statuses:
        return records
    held = [run_status(r) for r in records]
    unknown = [s for s in statuses if s not in held]
    if unknown:
        counts = ", ".join(f"{s} ({held.count(s)})" for s in sorted(set(held)))
        raise ValueError(printable(f"--status {unknown[0]}: no run has that status; these runs are {counts}"))
    return [r for r, status in zip(records, held) if status in statuses]


def _named(records: list[Record], names: list[str]) -> list[Record]:
    """The runs of the experiments or sweeps named.

    :raises ValueError: a name that is neither, naming the experiments there are
    """
    groups = [{experiment_of(r), (r.get("config") or {}).get("sweep")} for r in records]
    unknown = [n for n in names if not any(n in g for g in groups)]
    if unknown:
        shown = ", ".join(sorted({experiment_of(r) for r in records}))
        raise ValueError(printable(f"no runs of experiment or sweep {unknown[0]!r}; found: {shown}"))
    return [r for r, g in zip(records, groups) if g & set(names)]


def _runs_cell(row: dict) -> str:
    """Successful of all runs, and how many a search pruned."""
    return f"{row['successful']}/{row['runs']}" + (f" ({row['pruned']} pruned)" if row["pruned"] else "")


def _best_epoch_cell(epochs: list[int]) -> str:
    return f"{statistics.median(epochs):g} ({min(epochs)}–{max(epochs)})" if epochs else "-"


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A row as CSV columns: a dict of numbers as one column each (`test_r2_mean`), other lists and dicts as
    JSON, empty ones as an empty cell."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict) and value and all(isinstance(v, int | float) for v in value.values()):
            flat |= {f"{key}_{k}": v for k, v in value.items()}
        else:
            flat[key] = (json.dumps(value) if value else "") if isinstance(value, list | dict) else value
    return flat


def _counted(row: dict[str, Any]) -> dict[str, Any]:
    """A summary row for CSV: the runs running and failed as counts next to `runs` and `successful`, the
    failed ones' errors in `errors` (the JSON has them by name)."""
    counted: dict[str, Any] = {}
    for key, value in row.items():
        counted[key] = len(value) if key in ("running", "failed") else value
        if key == "failed":
            counted["errors"] = value
    return counted


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
        print("\n".join(printable(line) for line in buffer.getvalue().splitlines()))
    else:
        print(table)


def _age(updated: Any) -> str:
    """ ", last record 3 h 5 min ago" for a Unix time; a run that stays running was killed, or still trains."""
    if not isinstance(updated, int | float) or not math.isfinite(updated):
        return ""
    minutes = max(0, int(time.time() - updated)) // 60
    shown = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    return f", last record {shown} ago (a process killed with SIGKILL leaves its run running)"


def _settings_cell(settings: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items()) or "-"


def _better(metric: str) -> str:
    """Which way is better, for a table's header: ↑ for r2 and accuracy, ↓ for a loss."""
    return " ↑" if metric.endswith(("r2", "accuracy")) else " ↓" if metric.endswith("loss") else ""


def _ranking(experiments: list[Experiment], q: str | None) -> str:
    """The line saying how a table is ordered, when it is (on the validation figure); "" when not."""
    if not any(f"val_{q}" in exp.metrics for exp in experiments):
        return ""
    return f"best first on val_{q} (↑ higher is better, ↓ lower)"


def _heading(parts: list[str]) -> str:
    """What a table shows, in lines that fit the terminal."""
    return "\n".join(textwrap.fill(printable("; ".join(p for p in parts if p)), width()).splitlines())


KEPT_EPOCH = "mean ± std over the successful runs, each at the epoch it kept"


def _named_by_settings(settings: dict[str, dict[str, Any]]) -> bool:
    """Whether every experiment's name says its settings that differ (a sweep's names: `s_bond_dim4_l3`)."""
    return all(all(f"{k}{v}" in name for k, v in values.items()) for name, values in settings.items())


def _priority(q: str | None, chosen: list[str]) -> Callable[[str], int]:
    """The priority of each of `summary`'s columns after experiment (0) and ok/runs (1), see `register`'s help:
    the figures asked for with --metrics in their order, else val_<q>, test_<q>, the settings, test_loss;
    then the best epochs, then the other figures."""
    order = [*(chosen or [f"val_{q}", f"test_{q}", "settings", "test_loss"]), "settings", "best epoch"]
    return lambda name: 2 + (order.index(name) if name in order else len(order))


def _summary(args: argparse.Namespace) -> int:
    experiments = group(read_records(args))
    rows = summary_rows(experiments)
    q = quality_of(list(experiments.values()))
    metrics = list(dict.fromkeys(m for exp in experiments.values() for m in exp.metrics))
    chosen = [m for m in args.metrics.split(",") if m] if args.metrics else []
    unknown = [m for m in chosen if m not in metrics]
    if unknown and metrics:  # none yet (every run running or failed): nothing to tell a typo by
        raise ValueError(
            printable(f"--metrics {unknown[0]}: no run has that figure; these runs have: {', '.join(metrics)}")
        )
    if chosen:
        metrics = chosen
    elif q:  # the figures a researcher ranks by first, then the rest as the width allows
        first = [m for m in (f"val_{q}", f"test_{q}", "test_loss") if m in metrics]
        metrics = first + [m for m in metrics if m not in first]
    settings, priority = {r["experiment"]: r["settings"] for r in rows}, _priority(q, chosen)
    columns = [
        Column("experiment", [printable(r["experiment"]) for r in rows], 0),
        Column("ok/runs", [_runs_cell(r) for r in rows], 1),
    ]
    if any(settings.values()) and not _named_by_settings(settings):
        cells = [printable(_settings_cell(r["settings"])) for r in rows]
        columns.insert(1, Column("settings", cells, priority("settings")))
    columns.append(Column("best epoch", [_best_epoch_cell(r["best_epoch"]) for r in rows], priority("best epoch")))
    columns += [
        Column(
            printable(m) + _better(m),
            [_stats_cell(r[m]) if m in r else "-" for r in rows],
            priority(m),
        )
        for m in metrics
    ]
    ranking = _ranking(list(experiments.values()), q)
    text = f"{_heading([ranking, KEPT_EPOCH])}\n{fit(columns, width())}"
    notes = [f"running: {name}{_age(updated)}" for r in rows for name, updated in r["running"].items()]
    notes += [f"failed: {name}: {error}" for r in rows for name, error in r["failed"].items()]
    if any(r["pruned"] for r in rows):  # a search's trials
        ok, pruned = sum(r["successful"] for r in rows), sum(r["pruned"] for r in rows)
        notes.append(
            f"{len(rows)} experiments, {sum(r['runs'] for r in rows)} runs: {ok} ok, {pruned} pruned (stopped "
            f"early by a search), {sum(len(r['failed']) for r in rows)} failed"
        )
    for r in (r for r in rows if r["mixed"]):
        differ_in = "; ".join(f"{k} ({', '.join(v)})" for k, v in r["mixed"].items())
        notes.append(f"mixed: {r['experiment']}'s runs differ in {differ_in}: not one experiment")
    shown = [_counted(r) for r in rows] if args.format == "csv" else rows
    _emit(shown, args.format, "\n".join([text, "", *wrapped(notes)]) if notes else text)
    return 0


def _stats_cell(stats: dict[str, float]) -> str:
    """Mean ± std of a figure over seeds: 4 significant digits, the spread 2."""
    return f"{stats['mean']:.4g} ± {stats['std']:.2g}"


def _delta_cell(delta: dict[str, float]) -> str:
    """A difference of means to the reference and its spread across seeds."""
    return f"{delta['difference']:+.3g} ± {delta['spread']:.2g}"


def _label(i: int) -> str:
    """A compared experiment's short name in the table's header: A, B, ..., Z, then #27, #28, ..."""
    return chr(ord("A") + i) if i < 26 else f"#{i + 1}"


def _compare(args: argparse.Namespace) -> int:
    experiments = group(read_records(args, args.experiments))
    # best first, those with no successful run last; the first is the reference
    chosen = sorted(ranked({name: experiments[name] for name in args.experiments}), key=lambda e: not e.metrics)
    seeds, rows = seeds_rows(chosen), comparison_rows(chosen)
    ref, q = chosen[0].name, quality_of(chosen)
    columns = [Column("metric", [printable(r["metric"]) + _better(r["metric"]) for r in rows], 0)]
    columns.append(Column(_label(0), [_stats_cell(r[ref]) for r in rows], 1))
    for i, e in enumerate(chosen[1:], start=1):
        cells = [
            f"{_stats_cell(r[e.name])}, Δ {_delta_cell(r[f'{e.name} - {ref}'])}" if r[e.name] else "-" for r in rows
        ]
        columns.append(Column(_label(i), cells, 1 + i))
    settings = differing_settings(chosen)
    said = _named_by_settings(settings)
    legend = [
        f"{_label(i)}: {e.name} ({_seeds_cell(e)})"
        + ("" if said or not settings[e.name] else f": {_settings_cell(settings[e.name])}")
        for i, e in enumerate(chosen)
    ]
    heading = _heading(
        [_ranking(chosen, q), f"Δ: difference of means to {_label(0)} (the best) ± its standard error", KEPT_EPOCH]
    )
    notes = [f"failed: {name}: {error}" for exp in chosen for name, error in errors_of(exp).items()]
    text = "\n".join([heading, *wrapped(legend), fit(columns, width())])
    _emit(seeds + rows, args.format, "\n".join([text, "", *wrapped(notes)]) if notes else text)
    return 0


def _seeds_cell(exp: Experiment) -> str:
    """How many seeds the figures are over, and how many failed: n=3, or n=0, 2 failed."""
    failed = len(exp.by_status("failed"))
    return f"n={len(exp.by_status('ok'))}" + (f", {failed} failed" if failed else "")


def _plot(args: argparse.Namespace) -> int:
    from ntn.tracking.plot import damaged, plot_curves

    paths, _ = _positional(args)
    sources = [*args.sources, *paths, *([args.dir] if args.dir else [])] or [DEFAULT_DIR]
    records, left_out = [], []
    for record in read_records(args):
        problem = damaged(record)
        if problem:  # one line, as `summary` skips a run it cannot read
            print(printable(f"ntn-trackers: skipped run {record.get('experiment_name')!r}: {problem}"), file=sys.stderr)
        elif args.status is None and run_status(record) == "failed":
            left_out.append(record)
        else:
            records.append(record)
    if not records:
        raise ValueError(
            "no run left to plot" + (f" ({len(left_out)} failed: --status all draws them)" if left_out else "")
        )
    path = plot_curves(
        group(records), args.metric, Path(args.output), args.log_y, args.band, ", ".join(sources), len(left_out)
    )
    print(path)
    for record in left_out:  # beneath the path, one line each: what the figure leaves out, and why
        error = (record.get("summary") or {}).get("error") or "no error recorded"
        print(printable(f"not drawn (failed): {record.get('experiment_name')}: {error}"))
    return 0


STATUS_HELP = (
    "only the runs that ended so, comma-separated: finished, failed, running, interrupted, or any status the runs "
    "hold; all for every run"
)


def register(sub: argparse._SubParsersAction) -> None:
    summary = sub.add_parser(
        "summary",
        help="one row per experiment: runs, successes, metrics over seeds",
        description="One row per experiment, best first. A table wider than the terminal drops whole columns, "
        "the last in this order first: experiment, ok/runs, val_<figure>, test_<figure>, the settings that differ "
        "(when the names do not say them), test_loss, best epoch, the other figures (with --metrics: those named, "
        "in their order, then settings, best epoch).",
    )
    add_sources(summary)
    summary.add_argument("--format", choices=("table", "csv", "json"), default="table")
    summary.add_argument("--metrics", help="comma-separated summary figures to show in the table (default: all)")
    summary.add_argument("--status", help=STATUS_HELP + " (default all)")
    summary.set_defaults(func=_summary)

    compare = sub.add_parser(
        "compare",
        help="experiments side by side, with differences of means",
        description="Experiments side by side, best first, each named by a letter (A is the reference). A table "
        "wider than the terminal drops the columns of the last experiments first.",
    )
    compare.add_argument("experiments", nargs="+", metavar="EXPERIMENT", help="two or more experiment names")
    add_sources(compare, positional=False)
    compare.add_argument("--format", choices=("table", "csv", "json"), default="table")
    compare.add_argument("--status", help=STATUS_HELP + " (default all)")
    compare.set_defaults(func=_compare)

    plot = sub.add_parser("plot", help="learning curves (train solid, validation dashed) to a PNG")
    add_sources(plot)
    plot.add_argument("-o", "--output", default="curves.png", help="PNG file to write (default curves.png)")
    plot.add_argument("--metric", default="loss", help="metric to plot, e.g. loss, r2, accuracy (default loss)")
    plot.add_argument("--log-y", action="store_true", help="logarithmic y axis")
    plot.add_argument("--band", action="store_true", help="mean ± std per experiment instead of one line per run")
    plot.add_argument(
        "--status", help=STATUS_HELP + " (default: every run but the failed ones, which are listed beneath the path)"
    )
    plot.set_defaults(func=_plot)
