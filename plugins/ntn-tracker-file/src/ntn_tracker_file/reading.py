"""The `file` reader for `ntn-trackers summary/compare/plot`: run files, or directories of them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ntn.files import open_directory

from ntn_tracker_file.jsonsafe import from_json
from ntn_tracker_file.tracker import read_run_file, tracker_dir

REQUIRED = {"experiment_name": str, "metrics_log": list, "summary": dict}


def read_runs(source: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every run file at `source` (a file, or the *.json files of a directory), and one line per file
    that is damaged, is not a run file, or is a symlink in the directory (never followed)."""
    path = Path(source) if source else tracker_dir()  # "": where the tracker writes (TRACKER_DIR)
    records, problems = [], []
    if path.is_file():  # a file the user named, taken as named
        _add(records, problems, path, lambda: (path.read_bytes(), path.stat().st_mtime))
    elif path.is_dir():
        with open_directory(path) as directory_fd:
            for name in sorted(n for n in os.listdir(directory_fd) if n.endswith(".json")):
                _add(records, problems, path / name, lambda n=name: read_run_file(directory_fd, n, str(path / n)))
    else:
        problems.append(f"{path}: no such file or directory")
    return records, problems


def _add(records: list[dict[str, Any]], problems: list[str], file: Path, read: Callable[[], tuple[bytes, float]]):
    """Append the run that `read` gives (its content, its modification time) to `records`, else a line
    saying why not to `problems`."""
    try:
        document, modified = read()
    except OSError as err:
        problems.append(f"{file}: {(str(err).splitlines() or [''])[0]}")
        return
    try:
        record = from_json(json.loads(document))
    except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as err:
        problems.append(f"{file}: not valid JSON ({type(err).__name__}: {(str(err).splitlines() or [''])[0]})")
        return
    wrong = [k for k, kind in REQUIRED.items() if not isinstance(record, dict) or not isinstance(record.get(k), kind)]
    if wrong:
        problems.append(f"{file}: not an ntn run file (no {', '.join(wrong)})")
        return
    if record["summary"].get("status") == "running":  # when its last record was written
        record["summary"]["updated"] = modified
    records.append(record)
