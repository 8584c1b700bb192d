"""The spool: one append-only journal per run, written by the training process before a hook returns.

    <spool>/<run_hash>.jsonl        one JSON record per line: {"op": "open" | "hparams" | "metrics" |
                                    "summary" | "finalize", ...}; the first line is the "open" record;
                                    "open" and "finalize" carry the Unix "time" of the run's start and end
    <spool>/<run_hash>.delivered    how many of those records have reached the Aim repository
    <spool>/<run_hash>.artifacts/   copies of the files attached to the run, until it is delivered
    <spool>/uploader-<pid>.status   {"error": ..., "time": ...}: an uploader's last failure, for the exit line

A run trained again with the same run_id (`tracker.run_hash`) appends its records, from a new "open"
on, to its earlier attempt's journal if that is still in the spool; delivery replays both in order, so
the new attempt's records win.

The spool directory is $NTN_AIM_SPOOL, else ./.ntn-aim-spool. Each record is appended with one
`write` to a file opened with O_APPEND, so a process killed at any moment loses none of the records
whose hook had returned. The writer holds an exclusive lock (`ntn.files.lock_nowait`) on its journal
for as long as it lives; the kernel drops it when the process ends, however it ends, which is how `sync`
tells an abandoned journal from one still being written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ntn.files import lock_nowait, write_atomic

SPOOL_ENV = "NTN_AIM_SPOOL"
DEFAULT_SPOOL = ".ntn-aim-spool"


def spool_dir() -> Path:
    return Path(os.environ.get(SPOOL_ENV) or DEFAULT_SPOOL)


class JournalWriter:
    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        while True:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if not lock_nowait(self._fd):
                os.close(self._fd)
                raise BlockingIOError(errno.EWOULDBLOCK, "another live process is writing this run", str(path))
            if _is_at(self._fd, path):
                break
            os.close(self._fd)  # an uploader removed the journal between open and flock: open it anew
        self.append({"op": "open", "time": time.time(), **header})  # when training started

    def append(self, record: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record, allow_nan=True, ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self, status: str = "finished") -> None:
        self.append({"op": "finalize", "time": time.time(), "status": status})  # when and how the run ended
        os.close(self._fd)  # releases the lock


def read_records(path: Path) -> list[dict[str, Any]]:
    """The journal's complete records (a line still being written is not one yet)."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line]


def delivered_path(path: Path) -> Path:
    return path.with_suffix(".delivered")


def delivered(path: Path) -> int:
    try:
        return int(delivered_path(path).read_text())
    except (OSError, ValueError):
        return 0


def set_delivered(path: Path, count: int) -> None:
    write_atomic(delivered_path(path), f"{count}\n")


def is_finalized(records: list[dict[str, Any]]) -> bool:
    return bool(records) and records[-1].get("op") == "finalize"


def is_abandoned(path: Path) -> bool:
    """No live process is writing this journal."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return lock_nowait(fd)
    finally:
        os.close(fd)


def _is_at(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def artifacts_dir(path: Path) -> Path:
    """Where the files attached to the journal's run wait for delivery."""
    return path.with_suffix(".artifacts")


def remove(path: Path) -> None:
    """Remove a delivered journal, unless a new attempt of its run is writing to it again."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if lock_nowait(fd):
            path.unlink(missing_ok=True)
            delivered_path(path).unlink(missing_ok=True)
            shutil.rmtree(artifacts_dir(path), ignore_errors=True)
    finally:
        os.close(fd)


def pending(paths: list[Path]) -> tuple[int, int]:
    """(records not yet delivered, runs they belong to) among the journals at `paths`."""
    records = runs = 0
    for path in paths:
        try:
            missing = len(read_records(path)) - delivered(path)
        except FileNotFoundError:  # delivered, and removed by its uploader
            continue
        if missing > 0:
            records, runs = records + missing, runs + 1
    return records, runs


def finished_and_waiting(path: Path) -> bool:
    """Whether the journal at `path` holds a finished run not yet delivered (its uploader removes it then)."""
    try:
        return is_finalized(read_records(path))
    except FileNotFoundError:
        return False


def in_delivery(path: Path) -> bool:
    """Whether the journal at `path` still needs its uploader: records not yet delivered, or a finished run
    not yet closed (its uploader removes the journal then)."""
    try:
        records = read_records(path)
    except FileNotFoundError:
        return False
    return is_finalized(records) or len(records) > delivered(path)


def uploader_status(spool: Path, pid: int) -> Path:
    """Where uploader `pid` reports its last failure: {"error": one line, "time": Unix time}; it removes the
    file when it ends having delivered everything, else its training process does once it has read it."""
    return spool / f"uploader-{pid}.status"
