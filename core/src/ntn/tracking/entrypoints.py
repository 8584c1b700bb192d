"""Reading one entry-point group off sys.path quickly, remembering between processes who declares it.

`importlib.metadata.entry_points` parses the entry_points.txt of every installed distribution (~90
here: 7 ms, a cost every experiment paid before training). `on_sys_path` lists the metadata
directories on sys.path (listing is cheap), and reads the files of only the distributions known to
declare the group: the list of them is kept in ~/.cache/ntn/ (or $XDG_CACHE_HOME/ntn/) for as long
as the set of distributions on sys.path is the same. An install, upgrade or uninstall changes that set
and the next lookup reads every file again. The cache is only an accelerator: deleting it, or a home
directory that cannot be written, changes nothing but the time taken.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from collections.abc import Iterable
from importlib.metadata import EntryPoint, PathDistribution
from pathlib import Path

from ntn.files import write_atomic


def first_of_each(eps: Iterable[EntryPoint]) -> dict[str, EntryPoint]:
    """Name → entry point; a name declared twice resolves to the first, as the first on sys.path wins."""
    found: dict[str, EntryPoint] = {}
    for ep in eps:
        found.setdefault(ep.name, ep)
    return found


def on_sys_path(group: str) -> dict[str, EntryPoint]:
    """The entry points of `group` declared by the distributions in sys.path's directories (pip's)."""
    distributions = list(_metadata_directories())
    stamp = zlib.crc32("\n".join(distributions).encode())  # changes with the set of distributions
    cache = cache_file(group)
    declaring = _remembered(cache, stamp)
    if declaring is None:
        header = f"[{group}]"
        declaring = [info for info in distributions if header in _read(os.path.join(info, "entry_points.txt"))]
        _remember(cache, stamp, declaring)
    return first_of_each(
        ep for info in declaring for ep in PathDistribution(Path(info)).entry_points.select(group=group)
    )


def cache_file(group: str) -> Path:
    """Where the distributions declaring `group` are remembered, for this Python environment."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "ntn", f"entry-points-{group}-{zlib.crc32(sys.prefix.encode()):08x}.json")


def _metadata_directories() -> Iterable[str]:
    for directory in sys.path:
        try:
            names = os.listdir(directory or ".")
        except OSError:  # a zip file, a directory that does not exist
            continue
        yield from (os.path.join(directory, n) for n in names if n.endswith((".dist-info", ".egg-info")))


def _read(path: str | Path) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def _remembered(cache: Path, stamp: int) -> list[str] | None:
    try:
        remembered = json.loads(_read(cache))
        if remembered["stamp"] == stamp and all(isinstance(info, str) for info in remembered["declaring"]):
            return remembered["declaring"]
    except (ValueError, KeyError, TypeError):  # no cache yet, or a damaged one
        pass
    return None


def _remember(cache: Path, stamp: int, declaring: list[str]) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps({"stamp": stamp, "declaring": declaring}))
    except OSError:  # a read-only home: every lookup reads every file, as without the cache
        pass
