"""A sweep's results file (`results_sweep_{name}.json`): its own record of every run, per configuration,
with statistics over seeds, the configurations ranked on validation, a table and a plot.

The record is what makes a sweep resumable: run again, the sweep trains only the runs it does not hold as
successful (a failed run is trained again unless asked to keep it). It keeps the sweep's id, from which
every run's `config["run_id"]` is made, so that a resumed sweep replaces its own earlier attempts in the
trackers and never another sweep's runs. Configurations recorded earlier that the grid no longer holds
(a value removed) are never dropped: they are kept under `removed`. A configuration whose name holds runs
of other settings (a fixed setting changed) is refused, as by every launch (`experiments.names`).

Each run is recorded as it completes by appending one line to a journal beside the results file
(`results_sweep_{name}.journal.jsonl`): O(1) per run, where rewriting the whole results file after every
run made a sweep's bookkeeping grow with the square of its size. The journal is compacted into the results
file when it holds a quarter as many runs as the file (at least COMPACT_EVERY), at the end, when the sweep
is interrupted, and when a sweep starts after one that was killed: a run is in one or the other, never lost,
and replaying a journal line twice changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from pathlib import Path
from typing import Any

from ntn.tracking import Redactor, new_id, run_id
from ntn.tracking.tables import Column, fit, printable, width

from experiments.names import other_settings
from experiments.outputs import read_json, stats, write_json
from experiments.settings import SettingError, run_name, training
from experiments.sweepfile import Configuration, Sweep

SPLITS = ("train", "val", "test")
COMPACT_EVERY = 16  # journal lines before the results file is rewritten, at least


def identity(configuration: Configuration) -> dict[str, Any]:
    """The settings that decide what a configuration trains."""
    return {"model": configuration.model} | training(dataclasses.asdict(configuration.settings))


def _list(value: Any) -> list:
    if not isinstance(value, list):
        raise SettingError("not a list")
    return value


def _configuration_ok(configuration: Any) -> bool:
    """Whether a recorded configuration has the shape this module writes (runs with a seed, a success flag
    and numbers or nulls as figures)."""
    if not isinstance(configuration, dict) or not isinstance(configuration.get("runs", []), list):
        return False
    return all(
        isinstance(entry, dict)
        and type(entry.get("seed")) is int
        and isinstance(entry.get("success"), bool)
        and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool))
            for k, v in entry.items()
            if k.startswith(SPLITS)
        )
        for entry in configuration.get("runs", [])
    )


def status_of(entry: dict[str, Any]) -> str:
    """A run's end in its results entry: "finished", "failed" or "pruned" (stopped early by a search)."""
    return str(entry.get("status") or ("finished" if entry.get("success") else "failed"))


def belongs_to(document: Any, sweep: str) -> bool:
    """Whether `document` is a results file of the sweep named `sweep`."""
    return isinstance(document, dict) and document.get("sweep") == sweep


class Record:
    """The sweep's results file: every run recorded so far, per configuration, with its statistics."""

    def __init__(self, sweep: Sweep, path: Path, sweep_id: str | None = None) -> None:
        """:param sweep_id: the sweep's id when the results file holds none yet (a search's, kept by its study)"""
        self.sweep, self.path = sweep, path
        self.configurations = list(sweep.configurations)  # a search adds its trials as they are asked
        self.runs: dict[str, dict[int, dict[str, Any]]] = {c.settings.experiment_name: {} for c in sweep.configurations}
        previous = self._previous()
        self.sweep_id: str = previous.get("sweep_id") or sweep_id or new_id()
        earlier = {c.get("experiment"): c for c in previous.get("configurations", []) if isinstance(c, dict)}
        self.removed: list[dict[str, Any]] = [c for c in previous.get("removed", []) if isinstance(c, dict)]
        for configuration in sweep.configurations:
            kept = earlier.pop(configuration.settings.experiment_name, None)
            if kept is None:  # a value put back into the grid gets its runs back
                back = [c for c in self.removed if c.get("settings") == identity(configuration)]
                kept = back[-1] if back else None
                self.removed = [c for c in self.removed if c is not kept]
            if kept is None:
                continue
            mixed = other_settings([kept.get("settings") or {}], identity(configuration))
            if mixed:  # the rule of every launch (`experiments.names`)
                raise SettingError(
                    f"{path}: experiment {configuration.settings.experiment_name!r} already holds runs trained with "
                    f"other settings: {mixed}; name the sweep otherwise, or move {path} away to start afresh"
                )
            runs = self.runs[configuration.settings.experiment_name]
            for entry in kept.get("runs", []):
                if isinstance(entry, dict) and entry.get("seed") in sweep.seeds:
                    runs[entry["seed"]] = entry
        self.removed += [c for c in earlier.values() if c.get("runs")]  # values no longer in the grid
        self.journal = path.with_name(f"{path.stem}.journal.jsonl")
        self._redact = Redactor()
        self._journaled = self._replay()  # lines in the journal, not yet in the results file

    def _replay(self) -> int:
        """The runs a killed sweep journaled after its last compaction (a torn last line is skipped)."""
        try:
            lines = self.journal.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as err:
            raise SettingError(f"{self.journal}: cannot read the sweep's journal ({err}); move it away") from None
        for line in lines:
            try:
                name, entry = json.loads(line)
            except (ValueError, TypeError):
                continue
            runs = self.runs.get(name)
            if runs is not None and _configuration_ok({"runs": [entry]}) and entry["seed"] in self.sweep.seeds:
                runs[entry["seed"]] = entry
        return len(lines)

    def _previous(self) -> dict[str, Any]:
        """What an earlier call recorded in this results file ({} when there is none).

        :raises SettingError: the file is damaged, or holds another sweep's results
        """
        try:
            document = read_json(self.path)
        except (OSError, ValueError) as err:
            raise SettingError(f"{self.path}: cannot read the sweep's results file ({err}); move it away") from None
        if document is None:
            return {}
        if not belongs_to(document, self.sweep.name):
            raise SettingError(f"{self.path} holds no results of sweep {self.sweep.name!r}; name another --output")
        try:
            configurations = [c for key in ("configurations", "removed") for c in _list(document.get(key, []))]
        except SettingError:
            configurations = [None]
        if not all(_configuration_ok(c) for c in configurations):
            raise SettingError(f"{self.path}: the sweep's results file is damaged (its configurations); move it away")
        return document

    def run_id(self, configuration: Configuration, seed: int) -> str:
        """The run's `config["run_id"]`: its name and this sweep's id."""
        return run_id(run_name(configuration.settings, seed), self.sweep_id)

    def missing(self, retry_failed: bool = True) -> list[tuple[Configuration, int]]:
        """The runs to train: those not recorded, and (with `retry_failed`) those recorded as failed."""
        return [
            (c, seed)
            for c in self.configurations
            for seed in self.sweep.seeds
            if (entry := self.runs[c.settings.experiment_name].get(seed)) is None
            or (retry_failed and status_of(entry) == "failed")
        ]

    def add_configuration(self, configuration: Configuration) -> None:
        """A configuration decided as the sweep goes (a search's trial), with the runs recorded of it so far."""
        if configuration.settings.experiment_name not in self.runs:
            self.configurations.append(configuration)
            self.runs[configuration.settings.experiment_name] = {}

    def add(self, configuration: Configuration, entry: dict[str, Any]) -> None:
        """Record a run: in memory, a line in the journal, and now and then the whole results file."""
        name = configuration.settings.experiment_name
        self.runs[name][entry["seed"]] = entry
        with open(self.journal, "a", encoding="utf-8") as journal:
            journal.write(json.dumps([name, self._redact(entry)], allow_nan=False, default=str) + "\n")
        self._journaled += 1
        if self._journaled >= max(COMPACT_EVERY, self.n_recorded // 4):
            self.write()

    @property
    def n_recorded(self) -> int:
        return sum(len(runs) for runs in self.runs.values())

    @property
    def n_failed(self) -> int:
        return sum(status_of(entry) == "failed" for runs in self.runs.values() for entry in runs.values())

    @property
    def n_pruned(self) -> int:
        return sum(status_of(entry) == "pruned" for runs in self.runs.values() for entry in runs.values())

    def summary(self, configuration: Configuration) -> dict[str, Any]:
        quality = configuration.quality
        runs = [
            self.runs[configuration.settings.experiment_name][s]
            for s in sorted(self.runs[configuration.settings.experiment_name])
        ]
        ok = [r for r in runs if r["success"]]
        figures = {}
        for split in SPLITS:
            for metric in ("loss", quality):
                mean, std = stats([r[f"{split}_{metric}"] for r in ok if r.get(f"{split}_{metric}") is not None])
                figures |= {f"{split}_{metric}_mean": mean, f"{split}_{metric}_std": std}
        return {
            "experiment": configuration.settings.experiment_name,
            "model": configuration.model.upper(),
            "values": configuration.values,
            "metric": quality,
            "n_total": len(runs),
            "n_success": len(ok),
            "n_pruned": sum(status_of(r) == "pruned" for r in runs),
            **figures,
            "settings": identity(configuration),
            "runs": runs,
        }

    def document(self) -> dict[str, Any]:
        configurations = [self.summary(c) for c in self.configurations]
        ranked = rank(configurations)
        best = ranked[0] if ranked and ranked[0][f"val_{ranked[0]['metric']}_mean"] is not None else None
        return {
            "sweep": self.sweep.name,
            "sweep_id": self.sweep_id,
            "seeds": self.sweep.seeds,
            "grid": self.sweep.grid,
            "n_runs": len(self.configurations) * len(self.sweep.seeds),
            "n_recorded": self.n_recorded,
            "n_failed": self.n_failed,
            "n_pruned": self.n_pruned,
            "best": None if best is None else {k: v for k, v in best.items() if k not in ("settings", "runs")},
            "configurations": configurations,
        } | ({"removed": self.removed} if self.removed else {})

    def compact(self) -> None:
        """The results file rewritten when the journal holds runs it does not."""
        if self._journaled:
            self.write()

    def write(self) -> dict[str, Any]:
        """The results file, whole, with every run recorded; the journal, now in it, removed."""
        document = self.document()
        write_json(self.path, document)
        self.journal.unlink(missing_ok=True)
        self._journaled = 0
        return document


def rank(configurations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first by validation mean of the main metric (r2 or accuracy; never the test split)."""
    return sorted(
        configurations, key=lambda c: -math.inf if (v := c[f"val_{c['metric']}_mean"]) is None else v, reverse=True
    )


def table(document: dict[str, Any]) -> str:
    """The configurations, best first: seeds ok and each split's figure, fitted to the terminal (the train,
    then the test figures dropped first)."""
    ranked = rank(document["configurations"])
    q = ranked[0]["metric"] if ranked else "r2"

    def shown(c: dict[str, Any], split: str) -> str:
        mean, std = c[f"{split}_{q}_mean"], c[f"{split}_{q}_std"]
        return "n/a" if mean is None else f"{mean:.4f} ± {std:.4f}"

    columns = [
        Column("experiment (best first)", [printable(c["experiment"]) for c in ranked], 0),
        Column("seeds ok", [f"{c['n_success']}/{c['n_total']}" for c in ranked], 1),
        *(Column(f"{s} {q}", [shown(c, s) for c in ranked], 2 + i) for i, s in enumerate(("val", "test", "train"))),
    ]
    return fit(columns, width(), "a wider terminal or the results file")


def plot(document: dict[str, Any], path: Path) -> None:
    """The validation mean ± std (over seeds) of the main metric against each swept setting, one line per
    combination of the other settings; a configuration none of whose seeds trained is marked ✕ at the foot
    of its setting's value, in its line's colour, and named beneath the figure, so that none is left out
    unsaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    axes_names = list(document["grid"])
    figure, axes = plt.subplots(1, len(axes_names), figsize=(5 * len(axes_names), 4), squeeze=False)
    configurations = document["configurations"]
    for ax, name in zip(axes[0], axes_names):
        values = document["grid"][name]
        order = {k: [str(v) for v in grid_values] for k, grid_values in document["grid"].items()}
        others = sorted(  # in the grid's order (4, 6, 8, 10), not as text (10, 4, 6, 8)
            {tuple((k, str(v)) for k, v in c["values"].items() if k != name) for c in configurations},
            key=lambda other: [order[k].index(v) for k, v in other],
        )
        for other in others:
            points = [
                c for c in configurations if tuple((k, str(v)) for k, v in c["values"].items() if k != name) == other
            ]
            failed = [p for p in points if p[f"val_{p['metric']}_mean"] is None]
            points = [p for p in points if p[f"val_{p['metric']}_mean"] is not None]
            label = ", ".join(f"{k}={v}" for k, v in other) or None
            color = None
            if points:
                metric = points[0]["metric"]
                drawn = ax.errorbar(
                    [values.index(p["values"][name]) for p in points],
                    [p[f"val_{metric}_mean"] for p in points],
                    yerr=[p[f"val_{metric}_std"] for p in points],
                    marker="o",
                    capsize=3,
                    label=label,
                )
                color, label = drawn.lines[0].get_color(), None
            if failed:  # at the foot of the axis, whatever its scale
                foot = blended_transform_factory(ax.transData, ax.transAxes)
                x = [values.index(p["values"][name]) for p in failed]
                ax.plot(x, [0.04] * len(x), "x", color=color, transform=foot, markersize=9, mew=2, label=label)
        ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlabel(name)
        ax.set_ylabel("validation " + (configurations[0]["metric"] if configurations else ""))
        if len(others) > 1 and ax.get_legend_handles_labels()[1]:  # none when every run failed
            ax.legend(fontsize="small")
    figure.suptitle(f"sweep {document['sweep']}: mean ± std over seeds (✕: no seed trained)")
    failed = [c for c in configurations if c.get(f"val_{c['metric']}_mean") is None]
    if failed:
        names = "; ".join(" ".join(f"{k}={v}" for k, v in c["values"].items()) for c in failed)
        note = f"no seed trained (see their errors in the results file): {names}"
        figure.text(0.01, 0.01, textwrap.fill(note, 40 * len(axes_names)), fontsize="small", va="bottom")
        figure.tight_layout(rect=(0, 0.06 + 0.03 * note.count(";") / len(axes_names), 1, 1))
    else:
        figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
