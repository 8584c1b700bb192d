"""The plugins of an `ntn.*` entry-point group, found the one way: name → entry point, nothing imported.

A name declared by two distributions resolves to the one found first on sys.path, as an import would.
`importlib.metadata` is read afresh each time (as pytest, llm and tox do): a cache saved ~7 ms of a
process that spends seconds importing torch (docs/benchmarks.md), and kept state in the user's home.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points


def plugins(group: str) -> dict[str, EntryPoint]:
    """Name → entry point of every installed distribution's `group` (e.g. "ntn.trackers.readers")."""
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=group):  # distributions in sys.path order
        found.setdefault(entry_point.name, entry_point)
    return found
