"""Writing files so that a crash never leaves half of one, and checking a directory before relying on it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def check_writable(directory: str | os.PathLike[str]) -> None:
    """Raise OSError unless a file can be created in `directory` (creates nothing that stays)."""
    tempfile.TemporaryFile(dir=directory).close()


def create_beside(path: str | os.PathLike[str]) -> tuple[int, Path]:
    """A new empty file in `path`'s directory, open for writing, to be renamed to `path` once written.

    Unlike `tempfile.mkstemp` (mode 0600), it gets the mode any new file gets: 0666 less the umask.
    """
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name[:40]}.{os.urandom(4).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path` with `text` through a new file in the same directory and an atomic rename:
    a process killed at any moment leaves either the old or the new content."""
    fd, tmp = create_beside(path)
    try:
        write_all(fd, text.encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
