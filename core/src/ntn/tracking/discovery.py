"""Finding plugins: the entry points of the `ntn.*` groups, and the tracker backends a run selects.

A backend is an entry point of the group `ntn.trackers`: its name is what users select, its value a
tracker class or a factory called as `factory(experiment_name=..., config=...)`. Only selected ones are
imported. `importlib.metadata` is read afresh each time, as pytest, llm and tox do (docs/benchmarks.md).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NamedTuple

from ntn.tracking.contract import TrackerSelectionError

GROUP = "ntn.trackers"
DEFAULT_BACKEND = "file"
ALIASES = {"both": ("file", "aim"), "none": ()}


class Backend(NamedTuple):
    name: str
    factory: Callable[..., Any]
    distribution: str = ""  # "ntn-tracker-file 0.1.0": what the run's provenance names


def plugins(group: str) -> dict[str, EntryPoint]:
    """Name → entry point of `group`, nothing imported; a name declared twice resolves to the distribution
    found first on sys.path, as an import would."""
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=group):  # distributions in sys.path order
        found.setdefault(entry_point.name, entry_point)
    return found


def installed() -> dict[str, EntryPoint]:
    """Backend name → entry point, for every installed tracker plugin."""
    return plugins(GROUP)


def parse(selection: str | Sequence[str] | None) -> list[str]:
    """Backend names from an argument, else TRACKER_BACKEND, else "file": one name, a comma-separated list,
    `both` (= file,aim) or `none`; duplicates dropped."""
    if selection is None:
        selection = os.environ.get("TRACKER_BACKEND", "").strip() or DEFAULT_BACKEND
    names: list[str] = []
    for part in (p.strip().lower() for p in (selection.split(",") if isinstance(selection, str) else selection)):
        if not part:
            raise TrackerSelectionError(
                f"TRACKER_BACKEND has an empty name in {selection!r}; use names separated by commas, or 'none'"
            )
        names += [name for name in ALIASES.get(part, (part,)) if name not in names]
    return names


def load(name: str, entry_point: EntryPoint) -> Backend:
    """Import one backend; a failure names it and the underlying exception, in one line."""
    try:
        factory = entry_point.load()
    except Exception as err:  # any import-time failure of a third-party plugin
        seed_style = isinstance(err, ModuleNotFoundError) and err.name == "experiments"  # the seed's own import
        hint = " (it imports this repository's experiments: run from its root with PYTHONPATH=.)" * seed_style
        raise TrackerSelectionError(
            f"tracker backend {name!r} ({entry_point.value}) failed to import: {type(err).__name__}: {err}{hint}"
        ) from err
    if not callable(factory):
        raise TrackerSelectionError(f"tracker backend {name!r} ({entry_point.value}) is not a class or factory")
    dist = entry_point.dist
    return Backend(name, factory, f"{dist.name} {dist.version}" if dist is not None else "")


def select(selection: str | Sequence[str] | None = None) -> list[Backend]:
    """Resolve and import the selected backends, or raise a one-line TrackerSelectionError."""
    names, available = parse(selection), installed()
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, [*available, "both", "none"], n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close  # a typo of one installed, not a plugin to install
                else "a plugin's appears once installed (this repository's, from its root: pip install -c "
                f"constraints.txt ./plugins/ntn-tracker-{name})"
            )
            raise TrackerSelectionError(
                f"unknown tracker backend {name!r}; installed backends: {', '.join(sorted(available)) or 'none'} "
                f"(also 'both', 'none'); {hint}"
            )
    return [load(name, available[name]) for name in names]
