"""Summaries of recorded runs: runs grouped into experiments, statistics over seeds, comparisons.

Runs are grouped by experiment base name: config["experiment"], else the run name without `_seed<N>`.
A run counts as successful only when it finished and its summary says success: true; runs still in
progress (status "running"), runs a search stopped early (status "pruned") and failed runs are counted
and listed as such. Statistics are over the successful runs (population standard deviation, as in the
experiments' results file), each taken at the epoch the run kept (summary.best_epoch); a training figure
is named with its split (`train_loss`, `train_r2`).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ntn.tracking.readers import Record

_SEED_SUFFIX = re.compile(r"_seed\d+$")
NOT_METRICS = {"seed", "success", "status", "best_epoch", "error", "updated"}
# config keys that name or place a run rather than set what it trains
NOT_SETTINGS = {
    "experiment", "experiment_name", "run_id", "sweep", "swept", "trial", "dataset_info", "output_file", "seeds",
    "seed", "workers", "tracker_backend", "tracker_dir", "aim_repo", "device", "verbose", "save_model",
}  # fmt: skip


def experiment_of(record: Record) -> str:
    """The experiment a run belongs to: config["experiment"], else its name without `_seed<N>` (public:
    trackers that group runs by experiment use it too)."""
    name = str(record.get("experiment_name", ""))
    return str((record.get("config") or {}).get("experiment") or _SEED_SUFFIX.sub("", name) or name)


def study_of(record: Record) -> str:
    """Where a backend groups a run (an Aim or MLflow experiment, a TensorBoard folder): its sweep's name
    (config["sweep"]) in a sweep, so that the sweep reads as one study, else its experiment."""
    return str((record.get("config") or {}).get("sweep") or experiment_of(record))


def status_of(record: Record) -> str:
    """ "ok", "failed", "running" or "pruned" (stopped early by a search: neither a success nor a failure)."""
    summary = record.get("summary") or {}
    if summary.get("status") in ("running", "pruned"):
        return summary["status"]
    return "ok" if summary.get("success") is True else "failed"


def run_status(record: Record) -> str:
    """How a run ended, as its summary says: "finished" (a success), "failed", or whatever other status it
    holds ("running", "interrupted", "pruned", ...); a run that recorded none is finished when it says
    success: true, else failed."""
    summary = record.get("summary") or {}
    status = summary.get("status")
    if isinstance(status, str) and status not in ("finished", "failed", ""):
        return status
    return "finished" if summary.get("success") is True else "failed"


def figure_name(key: str, figures: Any) -> str:
    """A summary figure's name with its split: one that also has a `val_` or `test_` figure in `figures`
    (`loss`, `r2`, `accuracy`: the training split's) as `train_<key>`, every other as it is."""
    return f"train_{key}" if f"val_{key}" in figures or f"test_{key}" in figures else key


def best_epoch_of(record: Record) -> int | None:
    """summary.best_epoch, else the epoch of the lowest val_loss (or loss) in the metrics log."""
    summary = record.get("summary") or {}
    if isinstance(summary.get("best_epoch"), int):
        return summary["best_epoch"]
    epochs = [m for m in record.get("metrics_log") or [] if m.get("step", -1) >= 0]
    key = "val_loss" if any("val_loss" in m for m in epochs) else "loss"
    scored = [(m[key], m["step"]) for m in epochs if isinstance(m.get(key), int | float) and math.isfinite(m[key])]
    return min(scored)[1] if scored else None


def _metric_order(name: str) -> tuple[int, str]:
    """Held-out first: test_*, then val_*, then training figures (train_*), then the rest."""
    order = next((i for i, split in enumerate(("test_", "val_", "train_")) if name.startswith(split)), 3)
    return order, name


@dataclass
class Stats:
    n: int
    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        return cls(len(values), statistics.fmean(values), statistics.pstdev(values), min(values), max(values))


@dataclass
class Experiment:
    name: str
    runs: list[Record] = field(default_factory=list)

    def by_status(self, status: str) -> list[Record]:
        return [r for r in self.runs if status_of(r) == status]

    @cached_property  # the tables ask for it many times; `group` has added every run before
    def metrics(self) -> dict[str, Stats]:
        """Statistics of every numeric summary figure over the successful runs, held-out first, each named
        with its split (`figure_name`)."""
        values: dict[str, list[float]] = {}
        for record in self.by_status("ok"):
            summary = record.get("summary") or {}
            for key, value in summary.items():
                if key not in NOT_METRICS and isinstance(value, int | float) and not isinstance(value, bool):
                    if math.isfinite(value):
                        values.setdefault(figure_name(key, summary), []).append(float(value))
        return {k: Stats.of(values[k]) for k in sorted(values, key=_metric_order)}

    @property
    def best_epochs(self) -> list[int]:
        return [e for e in (best_epoch_of(r) for r in self.by_status("ok")) if e is not None]


@dataclass
class Newest:
    """Each run name once (`newest_of_each_name`): the records kept, in the order read; how many were the same
    run read again (another source: its `config["run_id"]`) and how many runs of earlier launches of a name."""

    records: list[Record]
    read_again: int
    earlier: int


def newest_of_each_name(records: list[Record]) -> Newest:
    """Of the runs of one name and settings, the one that started last: a script run again makes runs of the
    names its first launch made, which Aim, MLflow, TensorBoard and W&B keep beside them (the file backend
    replaces them), and counting both would count each seed twice. When it started is the record's `started`
    (a Unix time, which readers give where their backend keeps it); one without it counts as older, and of
    equals the last read. A run read from several sources (one `config["run_id"]`) is one run, the copy that
    has ended where one is still running (one backend's delivery cut short). Runs of one name but other
    settings are all kept: not one experiment, which `mixed_settings` says."""
    run_ids = [str((r.get("config") or {}).get("run_id") or f"#{i}") for i, r in enumerate(records)]
    started: dict[str, float] = {}  # a run's start, the earliest its copies say (each backend dates it apart)
    for run_id, record in zip(run_ids, records):
        if record.get("started") is not None:  # a finite number (`readers.problem_of`)
            started[run_id] = min(started.get(run_id, math.inf), float(record["started"]))
    newest: dict[str, tuple[float, bool, int]] = {}
    for i, (run_id, record) in enumerate(zip(run_ids, records)):
        ended = (record.get("summary") or {}).get("status") != "running"  # of one run's copies: a complete one
        order = (started.get(run_id, -math.inf), ended, i)
        run = repr((str(record.get("experiment_name")), sorted(_settings(record).items())))
        newest[run] = max(newest.get(run, order), order)
    kept = {i for *_, i in newest.values()}
    shown = {run_ids[i] for i in kept}
    left_out = [run_ids[i] for i in range(len(records)) if i not in kept]
    earlier = {run_id for run_id in left_out if run_id not in shown}
    return Newest([r for i, r in enumerate(records) if i in kept], len(left_out) - len(earlier), len(earlier))


def group(records: list[Record]) -> dict[str, Experiment]:
    experiments: dict[str, Experiment] = {}
    for record in sorted(records, key=lambda r: str(r.get("experiment_name", ""))):
        experiments.setdefault(experiment_of(record), Experiment(experiment_of(record))).runs.append(record)
    return experiments


def _settings(record: Record) -> dict[str, Any]:
    """A run's settings: the scalar values of its config that set what it trains."""
    config = record.get("config") or {}
    return {k: v for k, v in config.items() if k not in NOT_SETTINGS and isinstance(v, str | int | float | bool)}


def _values(each: list[dict[str, Any]]) -> dict[str, list[str]]:
    """For each setting whose value is not the same in all of `each`, its distinct values (repr), in order."""
    keys = sorted({k for s in each for k in s})
    values = {k: list(dict.fromkeys(repr(s.get(k)) for s in each)) for k in keys}
    return {k: v for k, v in values.items() if len(v) > 1}


def differing_settings(experiments: list[Experiment]) -> dict[str, dict[str, Any]]:
    """For each experiment, the settings whose values differ between the experiments (a sweep's swept values)."""
    first = {exp.name: _settings(exp.runs[0]) if exp.runs else {} for exp in experiments}
    differ = _values(list(first.values()))
    return {name: {k: s.get(k) for k in differ} for name, s in first.items()}


def mixed_settings(exp: Experiment) -> dict[str, list[str]]:
    """The settings in which an experiment's own runs differ (runs of other settings under one name)."""
    return _values([_settings(r) for r in exp.runs])


def quality_of(experiments: list[Experiment]) -> str | None:
    """The figure experiments are ranked by: r2 when the runs have one, else accuracy."""
    names = {m for exp in experiments for m in exp.metrics}
    return next((q for q in ("r2", "accuracy") if f"val_{q}" in names or f"test_{q}" in names), None)


def ranked(experiments: dict[str, Experiment]) -> list[Experiment]:
    """Best first on the validation figure (higher is better for r2 and accuracy); those without it last."""
    q = quality_of(list(experiments.values()))

    def key(exp: Experiment) -> float:
        stats = exp.metrics.get(f"val_{q}")
        return -stats.mean if stats is not None else math.inf

    return sorted(experiments.values(), key=key) if q else list(experiments.values())


def errors_of(exp: Experiment) -> dict[str, Any]:
    """Each failed run's name and the error its summary gives."""
    return {r.get("experiment_name"): (r.get("summary") or {}).get("error") for r in exp.by_status("failed")}


def summary_rows(experiments: dict[str, Experiment]) -> list[dict[str, Any]]:
    """One row per experiment, best first: counts, the settings that differ between the experiments, the
    settings its own runs differ in (`mixed`), statistics of each metric, best epochs, failures."""
    rows = []
    chosen = ranked(experiments)
    differ = differing_settings(chosen)
    for exp in chosen:
        row: dict[str, Any] = {
            "experiment": exp.name,
            "runs": len(exp.runs),
            "successful": len(exp.by_status("ok")),
            "running": {
                r.get("experiment_name"): (r.get("summary") or {}).get("updated") for r in exp.by_status("running")
            },
            "failed": errors_of(exp),
            "pruned": len(exp.by_status("pruned")),
            "settings": differ[exp.name],
            "mixed": mixed_settings(exp),
            "best_epoch": exp.best_epochs,
        }
        for name, stats in exp.metrics.items():
            row[name] = vars(stats)
        rows.append(row)
    return rows


def seeds_rows(experiments: list[Experiment]) -> list[dict[str, Any]]:
    """What became of each experiment's seeds: a row `runs` of counts and, when any failed, a row `failed` of
    each failed run's error, so that an experiment whose seeds all failed is still shown, with why."""
    rows: list[dict[str, Any]] = [{"metric": "runs"}]
    for exp in experiments:
        counts = {status: len(exp.by_status(status)) for status in ("ok", "failed", "running", "pruned")}
        rows[0][exp.name] = {"runs": len(exp.runs), "successful": counts.pop("ok"), **counts}
    failed = {exp.name: errors_of(exp) for exp in experiments if exp.by_status("failed")}
    return rows + ([{"metric": "failed", **failed}] if failed else [])


def comparison_rows(experiments: list[Experiment]) -> list[dict[str, Any]]:
    """Per metric: each experiment's mean ± std, and each one's difference of means to the first that has
    figures, with its spread across seeds (the standard error sqrt(s_a²/n_a + s_b²/n_b)). An experiment
    with no successful run has no figures (null)."""
    trained = [exp for exp in experiments if exp.metrics]
    if not trained:
        return []
    reference = trained[0]
    names = [m for m in reference.metrics if all(m in e.metrics for e in trained[1:])]
    rows = []
    for name in names:
        row: dict[str, Any] = {"metric": name}
        a = reference.metrics[name]
        row[reference.name] = vars(a)
        for exp in (e for e in experiments if e is not reference):
            b = exp.metrics.get(name)
            row[exp.name] = vars(b) if b else None
            if b:
                row[f"{exp.name} - {reference.name}"] = {
                    "difference": b.mean - a.mean,
                    "spread": math.sqrt(a.std**2 / a.n + b.std**2 / b.n),
                }
        rows.append(row)
    return rows
