"""FileTracker: one JSON document per run at <TRACKER_DIR>/<experiment_name>.json.

After every hook call the file on disk is a complete JSON document holding everything logged so far,
and a process killed at any moment leaves one. A hook changes the document from some byte on (the
hparams, the next metrics entry, or the summary) to its end:
- when those bytes lie inside one page, they are written in place with one `pwrite`: the kernel
  completes a write inside one page before a SIGKILL takes effect, so the file holds either the old or
  the new document (a shorter new document is padded with spaces, which JSON allows at the end);
- otherwise the whole document goes to a new file that is renamed over the old one.
A run's first document overwrites an earlier run's file of the same name the same way. In place is
the rule because it is cheap: on ext4, renaming over a file forces a writeback of the new one (~0.2 ms,
more than all the in-place writes of a default run).
Files attached to the run (`log_artifact`) are copied into <TRACKER_DIR>/.artifacts/<file stem>/ (a
hidden directory: TRACKER_DIR itself holds run files only, as the seed shows it).
While the run is going, `summary.status` is "running"; `finalize` sets the run's status ("finished",
"failed", "interrupted") unless the core has recorded it first. A process killed with SIGKILL leaves
"running", with the file's modification time as the age of its last record.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ntn.files import create_beside, write_all
from ntn.tracking import TrackerConfigError

from ntn_tracker_file.jsonsafe import to_json
from ntn_tracker_file.paths import file_stem

DEFAULT_DIR = "experiment_logs"
# Writing in place needs positional writes and the page size (POSIX); elsewhere (Windows) every hook
# replaces the file through a new one and an atomic rename, which keeps the same promise, slower.
IN_PLACE = all(hasattr(os, name) for name in ("pwrite", "pread", "sysconf"))
PAGE = os.sysconf("SC_PAGE_SIZE") if IN_PLACE else 0
NAME_OPEN = '{"experiment_name": '
METRICS_OPEN = b', "metrics_log": ['


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=str)  # payloads come plain from the core


def _dumps(value: Any) -> bytes:
    try:
        return _ENCODER.encode(value).encode()
    except ValueError:  # NaN or ±Inf: null in their place, named beside them
        return _ENCODER.encode(to_json(value)).encode()


def _experiment_of(document: bytes) -> str | None:
    """The experiment a run file holds (its first key, read without parsing the rest), else None."""
    try:
        text = document.decode("utf-8")
        name = json.JSONDecoder().raw_decode(text, len(NAME_OPEN))[0] if text.startswith(NAME_OPEN) else None
    except ValueError:  # UnicodeDecodeError included
        return None
    return name if isinstance(name, str) else None


def _check_not_another(path: Path, document: bytes, experiment_name: str) -> None:
    """Refuse to overwrite the run file of another experiment (a damaged file is replaced)."""
    previous = _experiment_of(document)
    if previous is not None and previous != experiment_name:
        raise TrackerConfigError(f"{path} already holds experiment {previous!r}, not {experiment_name!r}")


class FileTracker:
    """The `file` backend. Directory: `directory`, else $TRACKER_DIR, else ./experiment_logs."""

    def __init__(self, experiment_name: str, config: dict[str, Any] | None = None, directory: str | None = None):
        self.experiment_name = experiment_name
        self.directory = Path(directory or os.environ.get("TRACKER_DIR") or DEFAULT_DIR)
        self.path = self.directory / f"{file_stem(experiment_name)}.json"
        # the document: head + hparams + METRICS_OPEN + ", ".join(entries) + tail
        self._head = (
            NAME_OPEN.encode() + _dumps(experiment_name)
            + b', "config": ' + _dumps(config or {}) + b', "hparams": '
        )  # fmt: skip
        self._hparams = b"{}"
        self._entries: list[bytes] = []  # each metrics entry serialised once
        self.summary: dict[str, Any] = {"status": "running"}
        self._tail = self._summary_tail()
        self._fd: int | None = None  # the run file, open for in-place writes
        self._size = 0  # the file's length in bytes
        self._tail_offset = 0  # the byte where the tail starts, and the next metrics entry goes
        try:
            self._start()
        except OSError as err:
            self._close()
            raise TrackerConfigError(
                f"TRACKER_DIR {str(self.directory)!r} is not a writable directory ({err.strerror or err}); "
                "set TRACKER_DIR to a directory you can write to"
            ) from None

    @classmethod
    def check_environment(cls, run_names: Sequence[str] = ()) -> None:
        """Before any run: none of `run_names` would overwrite another experiment's file in TRACKER_DIR.

        :raises TrackerConfigError: naming the file and the experiment it holds
        """
        directory = Path(os.environ.get("TRACKER_DIR") or DEFAULT_DIR)
        for name in run_names:
            path = directory / f"{file_stem(name)}.json"
            try:
                document = path.read_bytes()
            except OSError:  # none yet, or unreadable: the run's start says so
                continue
            _check_not_another(path, document, name)

    def _start(self) -> None:
        """Write the run's first document: over an earlier run's file of this name, in place when both fit
        in one page, else through a new file."""
        try:
            fd = os.open(self.path, os.O_RDWR) if IN_PLACE else None
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True)
            return self._replace(self._document())
        except PermissionError:  # a read-only file in a writable directory: renamed over
            fd = None
        if fd is None and not self.path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            return self._replace(self._document())
        old = self.path.read_bytes() if fd is None else os.pread(fd, os.fstat(fd).st_size, 0)
        try:
            _check_not_another(self.path, old, self.experiment_name)
        except TrackerConfigError:
            if fd is not None:
                os.close(fd)
            raise
        if fd is None:
            return self._replace(self._document())
        self._fd, self._size = fd, len(old)
        self._put(0, self._document())

    def _summary_tail(self) -> bytes:
        return b'], "summary": ' + _dumps(self.summary) + b"}\n"

    def _document(self) -> bytes:
        return self._head + self._hparams + METRICS_OPEN + b", ".join(self._entries) + self._tail

    def _replace(self, document: bytes) -> None:
        """Write `document` to a new file and rename it over the run file; the new file stays open."""
        fd, tmp = create_beside(self.path)
        try:
            write_all(fd, document)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self._close()
        if not IN_PLACE:  # nothing to write in place later; an open file could not be renamed over (Windows)
            os.close(fd)
            fd = None
        self._fd, self._size = fd, len(document)
        self._tail_offset = len(document) - len(self._tail)

    def _put(self, offset: int, data: bytes) -> None:
        """Make the document from byte `offset` on `data` (which ends with the tail): in place when that is
        one write inside one page, else by replacing the file."""
        end = offset + len(data)
        if end < self._size:
            data = data[:-1] + b" " * (self._size - end) + b"\n"
        if self._fd is None or offset // PAGE != (offset + len(data) - 1) // PAGE:
            return self._replace(self._document())
        if os.pwrite(self._fd, data, offset) != len(data):  # a short write: the whole document, renamed in
            return self._replace(self._document())
        self._size = offset + len(data)
        self._tail_offset = end - len(self._tail)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self._hparams = _dumps(hparams)
        self._put(len(self._head), self._document()[len(self._head) :])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        entry = _dumps({"step": step} | metrics)
        piece = b", " + entry if self._entries else entry
        self._entries.append(entry)
        self._put(self._tail_offset, piece + self._tail)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.summary.update(summary)
        self._write_summary()

    def log_artifact(self, path: str, name: str) -> None:
        """Copy the file to <TRACKER_DIR>/.artifacts/<run file stem>/<name> (renamed into place whole)."""
        directory = self.directory / ".artifacts" / self.path.stem
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / file_stem(name)
        partial = directory / f".{target.name}.partial"
        shutil.copyfile(path, partial)
        os.replace(partial, target)

    def finalize(self, status: str = "finished") -> None:
        if self.summary.get("status") == "running":  # the core's last summary has it; a direct caller's may not
            self.summary["status"] = status
        try:
            self._write_summary()
        finally:
            self._close()

    def _write_summary(self) -> None:
        offset = self._tail_offset
        self._tail = self._summary_tail()
        self._put(offset, self._tail)
