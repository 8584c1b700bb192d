"""Files that every writer of this project shares: safe file names, writes that a crash never leaves half
done, checks that refuse symlinks and device nodes, and locks that keep two processes from writing the
same files at once."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: a byte-range lock instead (`lock_nowait`)
    fcntl = None
    import msvcrt

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_STEM = 150
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class Held(OSError):
    """Another live process holds the lock; the message names it (process id, since when)."""


def file_stem(name: str) -> str:
    """A file name (without extension) for `name`, the same for the same name and never for two names.

    Names made only of letters, digits, '.', '_' and '-' (not starting with '.') map to themselves.
    Any other name (with '/', '..', spaces, ':', NUL, unicode, or too long) has its odd characters
    replaced by '_' and gets a hash of the whole name appended.
    """
    if name and not _UNSAFE.search(name) and not name.startswith(".") and len(name) <= MAX_STEM:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    readable = _UNSAFE.sub("_", name).lstrip(".")[:MAX_STEM]
    return f"{readable}-{digest}" if readable else digest


def check_regular(path: str | os.PathLike[str], shown: str = "") -> None:
    """Raise OSError, in one line, when `path` exists and is not a regular file (a symlink, a directory,
    a device node, a FIFO): such a path is never written through or replaced.

    :param shown: how the message names it (default: the path)
    """
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else "not a file"
        raise OSError(f"{shown or repr(str(path))} is {kind}; refusing to write through it or replace it")


# Windows locks a byte range, and its locks are mandatory: the byte locked lies far past any content, so
# that readers and appenders of a locked file are never refused.
_WINDOWS_LOCKED_BYTE = 2**62


def lock_nowait(fd: int) -> bool:
    """Take the exclusive lock of the open file `fd`, unless another open file of it holds it (False).

    This project's one lock primitive (the file backend's experiment locks, the results files, the aim
    journals): flock on POSIX, a lock on one byte on Windows (written to the documented msvcrt API; this
    project's tests run on Linux). The lock goes when `fd` is closed or its process ends, however it ends.
    """
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    position = os.lseek(fd, 0, os.SEEK_CUR)
    os.lseek(fd, _WINDOWS_LOCKED_BYTE, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    finally:
        os.lseek(fd, position, os.SEEK_SET)
    return True


def hold(path: str | os.PathLike[str]) -> int:
    """Take the exclusive lock `path` (a small file naming its holder, created if missing) until
    `release`, or until this process ends: the kernel drops the lock of a process that dies, however it dies.

    :raises Held: another process holds it
    :raises OSError: `path` is a symlink or not a regular file
    """
    while True:
        check_regular(path, f"lock file {str(path)!r}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o666)
        if not lock_nowait(fd):
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise Held(holder)
        try:
            if os.path.samestat(os.lstat(path), os.fstat(fd)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder we waited for removed this file on release: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    return fd


def release(path: str | os.PathLike[str], fd: int) -> None:
    """Give up a lock taken with `hold` and remove its file (a process that opened it meanwhile sees the
    file gone and takes a new one)."""
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
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666), tmp
        except FileExistsError:
            continue


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Replace `path` with `data` through a new file in the same directory and an atomic rename:
    a process killed at any moment leaves either the old or the new content.

    :raises OSError: `path` is a symlink, a directory or a device (never replaced), or the write failed
    """
    check_regular(path)
    fd, tmp = create_beside(path)
    try:
        view = memoryview(data.encode() if isinstance(data, str) else data)
        while view:
            view = view[os.write(fd, view) :]
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
