"""ntn tracker backend `file`: one crash-safe JSON document per run."""

from __future__ import annotations

import json
from os import PathLike
from typing import Any

from ntn.files import file_stem

from ntn_tracker_file.jsonsafe import from_json
from ntn_tracker_file.tracker import FileTracker

__all__ = ["FileTracker", "file_stem", "load"]


def load(path: str | PathLike[str]) -> dict[str, Any]:
    """Read a run file back as a dict, with NaN and ±Inf restored where the file marks them."""
    with open(path, encoding="utf-8") as f:
        return from_json(json.load(f))
