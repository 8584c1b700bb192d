"""ntn tracker backend `file`: one crash-safe JSON document per run."""

from __future__ import annotations

import json
import time
from os import PathLike
from typing import Any

from ntn_tracker_file.jsonsafe import from_json
from ntn_tracker_file.paths import file_stem
from ntn_tracker_file.tracker import FileTracker

__all__ = ["FileTracker", "file_stem", "load"]


def load(path: str | PathLike[str], attempts: int = 3) -> dict[str, Any]:
    """Read a run file back as a dict, with NaN and ±Inf restored where the file marks them.

    A live run's file is complete between hook calls; a read that overlaps the microseconds of an
    in-place write may see a torn page, and is tried again (`attempts` times in all).
    """
    for _ in range(attempts - 1):
        try:
            return _read(path)
        except ValueError:
            time.sleep(0.01)
    return _read(path)


def _read(path: str | PathLike[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return from_json(json.load(f))
