"""The `file` reader for `ntn-trackers summary/compare/plot`: run files, or directories of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ntn_tracker_file import load
from ntn_tracker_file.tracker import tracker_dir

REQUIRED = {"experiment_name": str, "metrics_log": list, "summary": dict}


def read_runs(source: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every run file at `source` (a file, or the *.json files of a directory), and one line per file
    that is damaged or is not a run file."""
    path = Path(source) if source else tracker_dir()  # "": where the tracker writes (TRACKER_DIR)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
    elif path.is_file():
        files = [path]
    else:
        return [], [f"{path}: no such file or directory"]
    records, problems = [], []
    for file in files:
        try:
            record = load(file)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError, MemoryError) as err:
            problems.append(f"{file}: not valid JSON ({type(err).__name__}: {(str(err).splitlines() or [''])[0]})")
            continue
        wrong = [
            k for k, kind in REQUIRED.items() if not isinstance(record, dict) or not isinstance(record.get(k), kind)
        ]
        if wrong:
            problems.append(f"{file}: not an ntn run file (no {', '.join(wrong)})")
            continue
        if record["summary"].get("status") == "running":  # when its last record was written
            record["summary"]["updated"] = file.stat().st_mtime
        records.append(record)
    return records, problems
