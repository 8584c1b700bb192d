"""Writing files so that a crash never leaves half of one, and checking a directory before relying on it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def check_writable(directory: str | os.PathLike[str]) -> None:
    """Raise OSError unless a file can be created in `directory` (creates nothing that stays)."""
    tempfile.TemporaryFile(dir=directory).close()


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path` with `text` through a temporary file in the same directory and an atomic rename:
    a process killed at any moment leaves either the old or the new content."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
