"""Writing files so that a crash never leaves half of one, checking a directory before relying on it, and
keeping two processes from writing the same files at once."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; `hold` then guards nothing
    fcntl = None


class Held(OSError):
    """Another live process holds the lock; the message names it (process id, since when)."""


def hold(path: str | os.PathLike[str]) -> int | None:
    """Take the exclusive lock `path` (a small file naming its holder, created if missing) until
    `release`, or until this process ends: the kernel drops the lock of a process that dies, however it dies.

    :raises Held: another process holds it
    """
    if fcntl is None:
        return None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise Held(holder) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder we waited for removed this file on release: lock the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    return fd


def release(path: str | os.PathLike[str], fd: int | None) -> None:
    """Give up a lock taken with `hold` and remove its file (a process that opened it meanwhile sees the
    file gone and takes a new one)."""
    if fd is None:
        return
    Path(path).unlink(missing_ok=True)
    os.close(fd)


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
