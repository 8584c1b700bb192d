"""One registry of experiment names, for run_*.sh and run_sweep.sh alike.

The registry is what the runs themselves recorded: under a name, the runs in TRACKER_DIR (when the file
backend records the launch: its locks keep them from changing meanwhile), whoever trained them (a script or
a sweep, still running or ended), and the launch's own results file. A launch whose training settings
differ from theirs is refused (`other_settings`): runs of other settings under one name would be counted as
one experiment, and a launch would replace their run files while a results file still counts them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from ntn.tracking import experiment_of
from ntn.tracking.readers import read_runs

from experiments.settings import training


def identity(model: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What decides what an experiment trains (the model, the training settings, the name among them), as a
    run's config records it (in JSON: a tuple is a list)."""
    return json.loads(json.dumps({"model": model.upper()} | training(settings), default=str))


def recorded(backends: Sequence[Any], tracker_dir: str, experiments: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """The identities of the runs recorded under each of `experiments` in `tracker_dir`, when the file
    backend is among `backends` (a name without runs is left out). A damaged or foreign file there is no
    run of theirs (`ntn-trackers summary` names it)."""
    if "file" not in {b.name for b in backends}:
        return {}
    wanted = set(experiments)
    found: dict[str, list[dict[str, Any]]] = {}
    for record in read_runs("file", tracker_dir)[0]:
        name, config = experiment_of(record), record.get("config") or {}
        if name in wanted:
            found.setdefault(name, []).append(identity(str(config.get("model", "")), config))
    return found


def other_settings(recorded: Iterable[dict[str, Any]], now: dict[str, Any]) -> str:
    """The settings in which a recorded run differs from `now` (identities), as `N_EPOCHS=10 (this run: 1)`;
    "" when none does. A setting a run did not record (added since) differs from nothing."""
    for before in recorded:
        differ = [k for k in now if k in before and before[k] != now[k]]
        if differ:
            return ", ".join(f"{k.upper()}={before[k]!r} (this run: {now[k]!r})" for k in differ)
    return ""
