"""Reading one entry-point group off sys.path quickly, remembering between processes who declares it.

`importlib.metadata.entry_points` parses the entry_points.txt of every installed distribution (~90
here: 7 ms, a cost every experiment paid before training). `on_sys_path` keeps in ~/.cache/ntn/ (or
$XDG_CACHE_HOME/ntn/) the metadata directories found in each sys.path directory, and the group's
entry points with the files that declare them. A lookup stats each sys.path directory and lists only
those whose mtime changed (installing, upgrading or uninstalling a distribution changes it); while the
list of distributions and the declaring files are unchanged, it reads no distribution's files. Any
change, and a damaged cache, makes it read every file again. The cache is only an accelerator:
deleting it, or a home directory that cannot be written, changes nothing but the time taken.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from collections.abc import Iterable
from importlib.metadata import EntryPoint, PathDistribution
from pathlib import Path
from typing import Any

from ntn.files import write_atomic

RACY_NS = 2_000_000_000  # a directory changed this recently may change again within its mtime's tick

Declared = tuple[str, str, str, int]  # (name, value, the entry_points.txt declaring it, that file's mtime)


def first_of_each(eps: Iterable[EntryPoint]) -> dict[str, EntryPoint]:
    """Name → entry point; a name declared twice resolves to the first, as the first on sys.path wins."""
    found: dict[str, EntryPoint] = {}
    for ep in eps:
        found.setdefault(ep.name, ep)
    return found


def on_sys_path(group: str) -> dict[str, EntryPoint]:
    """The entry points of `group` declared by the distributions in sys.path's directories (pip's)."""
    cache = cache_file(group)
    remembered = _load(cache)
    known = remembered.get("listings", {})
    listings = _listings(known)
    distributions = _distributions(listings)
    declared = remembered.get("declared")
    if _distributions(known) != distributions or not _unchanged(declared):
        declared = _declared(distributions, group)
    # saved when what it found changed; a directory without distributions (the working directory,
    # which changes often) is listed again each time rather than saved each time
    if declared != remembered.get("declared") or any(
        infos and [mtime, infos] != known.get(directory) for directory, (mtime, infos) in listings.items()
    ):
        _save(cache, {"listings": listings, "declared": declared})
    return first_of_each(EntryPoint(name, value, group) for name, value, _, _ in declared)


def _distributions(listings: dict[str, list]) -> list[str]:
    """The metadata directories of `listings`, in sys.path order."""
    return [info for directory in dict.fromkeys(sys.path) if directory in listings for info in listings[directory][1]]


def cache_file(group: str) -> Path:
    """Where what `on_sys_path` found for `group` is kept, for this Python environment."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "ntn", f"entry-points-{group}-{zlib.crc32(sys.prefix.encode()):08x}.json")


def _listings(known: dict[str, Any]) -> dict[str, list]:
    """sys.path directory → [its mtime, the metadata directories in it], listing only changed ones."""
    listings = {}
    now = time.time_ns()
    for directory in dict.fromkeys(sys.path):
        try:
            mtime = os.stat(directory or ".").st_mtime_ns
        except OSError:
            continue
        if known.get(directory, [None])[0] == mtime:
            listings[directory] = known[directory]
            continue
        try:
            names = sorted(os.listdir(directory or "."))
        except OSError:  # a zip file
            continue
        infos = [os.path.join(directory, n) for n in names if n.endswith((".dist-info", ".egg-info"))]
        listings[directory] = [mtime if now - mtime > RACY_NS else None, infos]  # None: list it again next time
    return listings


def _unchanged(declared: list[Declared] | None) -> bool:
    try:
        return declared is not None and all(os.stat(path).st_mtime_ns == mtime for _, _, path, mtime in declared)
    except OSError:  # a declaring file is gone
        return False


def _declared(distributions: list[str], group: str) -> list[Declared]:
    """Each entry point of `group` with the file declaring it, in sys.path order."""
    header = f"[{group}]"
    declared = []
    for info in distributions:
        path = os.path.join(info, "entry_points.txt")
        if header in _read(path):
            mtime = os.stat(path).st_mtime_ns
            eps = PathDistribution(Path(info)).entry_points.select(group=group)
            declared += [(ep.name, ep.value, path, mtime) for ep in eps]
    return declared


def _read(path: str | Path) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def _load(cache: Path) -> dict[str, Any]:
    """The cache's content, leaving out anything not of the shape `on_sys_path` writes."""
    try:
        remembered = json.loads(_read(cache))
    except ValueError:  # no cache yet, or a damaged one
        return {}
    if not isinstance(remembered, dict):
        return {}
    listings, declared = remembered.get("listings"), remembered.get("declared")
    listings = listings if isinstance(listings, dict) else {}
    valid = isinstance(declared, list) and all(_is_declared(d) for d in declared)
    return {
        "listings": {directory: listing for directory, listing in listings.items() if _is_listing(listing)},
        "declared": [tuple(d) for d in declared] if valid else None,
    }


def _is_listing(listing: Any) -> bool:
    return (
        isinstance(listing, list)
        and len(listing) == 2
        and isinstance(listing[1], list)
        and all(isinstance(info, str) for info in listing[1])
    )


def _is_declared(declared: Any) -> bool:
    return isinstance(declared, list) and len(declared) == 4 and all(isinstance(x, str) for x in declared[:3])


def _save(cache: Path, found: dict[str, Any]) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps(found))
    except OSError:  # a read-only home: every lookup reads every file, as without the cache
        pass
