"""Files that every writer of this project shares: safe file names, writes that a crash never leaves half
done, checks that refuse symlinks and device nodes, locks that keep two processes from writing the
same files at once, directories opened without following a symlink below their root (`open_directory`), and
files stored once per content (`store_once`).

Every function taking `dir_fd` reads its path relative to that open directory (as `os.open` does), so
that a caller holding an `open_directory` descriptor never has a path resolved through a symlink (POSIX).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: a byte-range lock instead (`lock_nowait`)
    fcntl = None
    import msvcrt

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_STEM = 150
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


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


def _kind(mode: int) -> str:
    return "a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else "not a file"


def check_regular(path: str | os.PathLike[str], shown: str = "", dir_fd: int | None = None) -> None:
    """Raise OSError, in one line, when `path` exists and is not a regular file (a symlink, a directory,
    a device node, a FIFO): such a path is never written through or replaced.

    :param shown: how the message names it (default: the path)
    """
    try:
        mode = os.lstat(path, dir_fd=dir_fd).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISREG(mode):
        raise OSError(f"{shown or repr(str(path))} is {_kind(mode)}; refusing to write through it or replace it")


@contextlib.contextmanager
def open_directory(root: str | os.PathLike[str], *parts: str, create: bool = False) -> Iterator[int]:
    """An open descriptor of the directory root/parts[0]/parts[1]/…, closed when the block ends.

    `root` is taken as the user named it (it may be a symlink the user made); each of `parts` is opened
    relative to the one before with O_NOFOLLOW, so that no symlink below `root` is ever followed, and,
    with `create`, made first when missing.

    :raises OSError: one line naming the part that is a symlink or no directory, or `root` missing
    """
    fd = os.open(root, os.O_RDONLY | _DIRECTORY)
    try:
        for depth, part in enumerate(parts, 1):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            try:
                inner = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=fd)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                shown = os.path.join(root, *parts[:depth])
                kind = _kind(os.lstat(part, dir_fd=fd).st_mode)
                raise OSError(f"{shown!r} is {kind}, not a directory; refusing to follow it") from None
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def open_regular(name: str, dir_fd: int, shown: str = "") -> int:
    """A descriptor of the regular file `name` in the directory `dir_fd`, opened for reading without
    following a symlink (nor blocking on a FIFO).

    :raises OSError: one line when it is a symlink or no regular file (FileNotFoundError when missing)
    """
    try:
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise OSError(f"{shown or repr(name)} is a symbolic link; refusing to read through it") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise OSError(f"{shown or repr(name)} is {_kind(mode)}; refusing to read it")
    return fd


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


def hold(path: str | os.PathLike[str], dir_fd: int | None = None) -> int:
    """Take the exclusive lock `path` (a small file naming its holder, created if missing) until
    `release`, or until this process ends: the kernel drops the lock of a process that dies, however it dies.

    :raises Held: another process holds it
    :raises OSError: `path` is a symlink or not a regular file
    """
    while True:
        check_regular(path, f"lock file {str(path)!r}", dir_fd)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o666, dir_fd=dir_fd)
        if not lock_nowait(fd):
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise Held(holder)
        try:
            if os.path.samestat(os.lstat(path, dir_fd=dir_fd), os.fstat(fd)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder we waited for removed this file on release: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    return fd


def release(path: str | os.PathLike[str], fd: int, dir_fd: int | None = None) -> None:
    """Give up a lock taken with `hold` and remove its file (a process that opened it meanwhile sees the
    file gone and takes a new one)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path, dir_fd=dir_fd)
    os.close(fd)


def check_writable(directory: str | os.PathLike[str]) -> None:
    """Raise OSError unless a file can be created in `directory` (creates nothing that stays)."""
    tempfile.TemporaryFile(dir=directory).close()


def _beside(path: Path) -> Path:
    """A name in `path`'s directory for a file to be renamed to `path` (random: likely unused)."""
    return path.with_name(f".{path.name[:40]}.{os.urandom(4).hex()}.tmp")


def create_beside(path: str | os.PathLike[str], dir_fd: int | None = None) -> tuple[int, Path]:
    """A new empty file in `path`'s directory, open for writing, to be renamed to `path` once written.

    Unlike `tempfile.mkstemp` (mode 0600), it gets the mode any new file gets: 0666 less the umask.
    """
    while True:
        tmp = _beside(Path(path))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666, dir_fd=dir_fd), tmp
        except FileExistsError:
            continue


def write_atomic(path: str | os.PathLike[str], data: str | bytes, dir_fd: int | None = None) -> None:
    """Replace `path` with `data` through a new file in the same directory and an atomic rename:
    a process killed at any moment leaves either the old or the new content.

    :raises OSError: `path` is a symlink, a directory or a device (never replaced), or the write failed
    """
    check_regular(path, dir_fd=dir_fd)
    fd, tmp = create_beside(path, dir_fd)
    try:
        view = memoryview(data.encode() if isinstance(data, str) else data)
        while view:
            view = view[os.write(fd, view) :]
        os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        os.close(fd)


def store_once(data: bytes, store_fd: int, name: str, dir_fd: int) -> str:
    """Make `name` in the directory `dir_fd` a hard link to the copy of `data` in the store `store_fd` (a
    directory of files named by the SHA-256 of their content), written there first unless it holds it
    already: content that many runs attach takes its space once. A stored file whose content does not
    match its name (damaged, or planted) is replaced. Where no link can be made (the stored file is
    another user's, has too many links, or the file system has none) `name` gets a copy.

    :return: the SHA-256 of `data`, the stored file's name
    :raises OSError: `name` or the stored file is a symlink or not a regular file, or a write failed
    """
    digest = hashlib.sha256(data).hexdigest()
    try:
        with os.fdopen(open_regular(digest, store_fd, f"stored file {digest!r}"), "rb") as stored:
            intact = hashlib.file_digest(stored, "sha256").hexdigest() == digest
    except FileNotFoundError:
        intact = False
    if not intact:
        write_atomic(digest, data, store_fd)
    check_regular(name, dir_fd=dir_fd)
    while True:
        link = _beside(Path(name))
        try:
            os.link(digest, link, src_dir_fd=store_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            break
        except FileExistsError:
            continue
        except FileNotFoundError:  # another writer of this content renamed its copy over the one linked here
            try:  # (Linux's linkat: ENOENT for an inode whose last name just went); the name holds its copy
                os.lstat(digest, dir_fd=store_fd)
            except FileNotFoundError:  # or the stored file is gone altogether: stored again
                write_atomic(digest, data, store_fd)
        except OSError as err:  # another user's file (protected_hardlinks), too many links, or none here
            if err.errno not in (errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
                raise
            write_atomic(name, data, dir_fd)  # a copy of its own, then
            return digest
    try:
        os.replace(link, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:  # renamed over a name of the same file (a run attaching it again), both names stay (POSIX rename)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link, dir_fd=dir_fd)
    return digest
