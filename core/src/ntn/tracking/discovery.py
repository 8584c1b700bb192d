"""Finding trackers: installed distributions declare them as entry points in the group `ntn.trackers`.

The entry point's name is the backend name users select; its value is a tracker class, or a factory
called as `factory(experiment_name=..., config=...)`. Only selected entry points are imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import Any

from ntn.tracking.entrypoints import plugins

GROUP = "ntn.trackers"
DEFAULT_BACKEND = "file"
ALIASES = {"both": ("file", "aim"), "none": ()}


class TrackerSelectionError(ValueError):
    """The selected backends cannot be used (unknown, not installed, or failing to import)."""


class TrackerConfigError(ValueError):
    """A tracker's configuration from the user is invalid (e.g. an unwritable TRACKER_DIR).

    A tracker raises it from its constructor; unlike other failures, it stops the run before training.
    """


@dataclass(frozen=True)
class Backend:
    """One installed tracker: its name, where it comes from, and how to build it."""

    name: str
    factory: Callable[..., Any]
    target: str  # the entry point's value, "module:attribute"


def installed() -> dict[str, EntryPoint]:
    """Backend name → entry point, for every installed distribution (nothing is imported).

    A name declared twice resolves to the distribution found first on sys.path, as imports do.
    """
    return plugins(GROUP)


def parse(selection: str | Sequence[str] | None) -> list[str]:
    """Backend names from an argument, else from TRACKER_BACKEND, else the default ("file").

    Accepts one name, a comma-separated list, `both` (= file,aim) or `none`; duplicates are dropped.
    """
    if selection is None:
        selection = os.environ.get("TRACKER_BACKEND", "").strip() or DEFAULT_BACKEND
    parts = selection.split(",") if isinstance(selection, str) else list(selection)
    names: list[str] = []
    for part in (p.strip().lower() for p in parts):
        if not part:
            raise TrackerSelectionError(
                f"TRACKER_BACKEND has an empty name in {selection!r}; use names separated by commas, or 'none'"
            )
        for name in ALIASES.get(part, (part,)):
            if name not in names:
                names.append(name)
    return names


def describe(ep: EntryPoint) -> tuple[str, str]:
    """The name and version of the distribution declaring `ep` (reads its metadata)."""
    dist = ep.dist
    return (dist.metadata["Name"], dist.version) if dist is not None else ("?", "?")


def load(name: str, entry_point: EntryPoint) -> Backend:
    """Import one backend; a failure names the backend and the underlying exception."""
    try:
        factory = entry_point.load()
    except Exception as err:  # any import-time failure of a third-party plugin
        raise TrackerSelectionError(
            f"tracker backend {name!r} ({entry_point.value}) failed to import: {type(err).__name__}: {err}"
        ) from err
    if not callable(factory):
        raise TrackerSelectionError(f"tracker backend {name!r} ({entry_point.value}) is not a class or factory")
    return Backend(name, factory, entry_point.value)


def select(selection: str | Sequence[str] | None = None) -> list[Backend]:
    """Resolve and import the selected backends, or raise a one-line TrackerSelectionError."""
    names = parse(selection)
    if not names:
        return []
    available = installed()
    for name in names:
        if name not in available:
            listed = ", ".join(sorted(available)) or "none"
            raise TrackerSelectionError(
                f"unknown tracker backend {name!r}; installed backends: {listed} (also 'both', 'none'). "
                f"If it is published as a plugin: pip install ntn-tracker-{name}"
            )
    return [load(name, available[name]) for name in names]
