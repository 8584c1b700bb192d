"""Mapping experiment names to file names that stay inside the tracker directory."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_STEM = 150


def file_stem(experiment_name: str) -> str:
    """A file name (without .json) for `experiment_name`.

    Names made only of letters, digits, '.', '_' and '-' (not starting with '.') map to themselves.
    Any other name — with '/', '..', spaces, NUL, unicode, or too long — has its odd characters
    replaced by '_' and gets a hash of the whole name appended, so two names never share a file.
    """
    if (
        experiment_name
        and not _UNSAFE.search(experiment_name)
        and not experiment_name.startswith(".")
        and len(experiment_name) <= MAX_STEM
    ):
        return experiment_name
    digest = hashlib.sha256(experiment_name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    readable = _UNSAFE.sub("_", experiment_name).lstrip(".")[:MAX_STEM]
    return f"{readable}-{digest}" if readable else digest
