"""Reading recorded runs back: plugins declare readers in the entry-point group `ntn.trackers.readers`.

A reader is a function `read_runs(source: str) -> (records, problems)`. Each record has the shape of
the seed's run file — `experiment_name`, `config`, `hparams`, `metrics_log` (a list of `{"step": ...,
metric: value}`, step -1 for the initial evaluation) and `summary` (with `status` "running",
"finished", "failed" or "interrupted", and for a running run optionally `updated`, the Unix time of its
last record) — and each problem is a one-line description of a source that could not be read.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

READERS_GROUP = "ntn.trackers.readers"
Record = dict[str, Any]


def read_runs(backend: str, source: str) -> tuple[list[Record], list[str]]:
    """Records from `source` through the reader of `backend` (e.g. "file" or "aim")."""
    readers = {ep.name: ep for ep in entry_points(group=READERS_GROUP)}
    if backend not in readers:
        raise ValueError(f"reading {backend!r} runs needs the {backend} plugin: pip install ntn-tracker-{backend}")
    return readers[backend].load()(source)
