"""Run identity: `config["run_id"]` names one run of one launch, so that a retry of that run (a sweep's
worker died, an interrupted sweep was run again) replaces its earlier attempt in every backend, and a run
of another launch or sweep with the same name never does.

A launch (a script's call, a sweep, kept in the sweep's results file so that a resume keeps it) gets an
id from `new_id()`; its runs' ids are `f"{name}@{launch}"`. Backends key their records by `run_key`.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any


def new_id() -> str:
    """A new launch id: unique across directories, users and machines (a random UUID, 32 hex digits)."""
    return uuid.uuid4().hex


def run_id(name: str, launch: str) -> str:
    """The id of the run `name` of the launch `launch`."""
    return f"{name}@{launch}"


def run_key(run_id: Any, length: int = 24) -> str:
    """A fixed-length hex key for `run_id`, safe in file names, run hashes and search filters."""
    return hashlib.sha256(f"ntn-run-id:{run_id}".encode("utf-8", "surrogatepass")).hexdigest()[:length]
