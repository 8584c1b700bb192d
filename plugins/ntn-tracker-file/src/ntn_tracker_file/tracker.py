"""FileTracker: one JSON document per run at <TRACKER_DIR>/<experiment_name>.json.

After every hook call the file on disk is a complete JSON document holding everything logged so far,
and a process killed at any moment leaves one:
- a metrics entry is written in place, over the document's tail ("], "summary": …}"), with the tail
  after it, in one `pwrite` that stays inside one page: the kernel completes such a write before a
  SIGKILL takes effect, so the file holds either the old or the new document;
- every other change (and an entry whose write would cross a page) replaces the file atomically
  (`ntn.files.write_atomic`).
While the run is going, `summary.status` is "running"; `finalize` sets it to "finished".
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Any

from ntn.files import check_writable, write_atomic
from ntn.tracking import TrackerConfigError
from ntn.tracking.redact import Redactor

from ntn_tracker_file.jsonsafe import to_json
from ntn_tracker_file.paths import file_stem

DEFAULT_DIR = "experiment_logs"


def _dumps(value: Any) -> str:
    return json.dumps(to_json(value), ensure_ascii=False, allow_nan=False)


class FileTracker:
    """The `file` backend. Directory: `directory`, else $TRACKER_DIR, else ./experiment_logs."""

    def __init__(self, experiment_name: str, config: dict[str, Any] | None = None, directory: str | None = None):
        self.redact = Redactor()  # also here, for callers that use this class without the core
        self.experiment_name = experiment_name
        self.directory = Path(directory or os.environ.get("TRACKER_DIR") or DEFAULT_DIR)
        self.path = self.directory / f"{file_stem(experiment_name)}.json"
        self._prepare_directory()
        self._head = {
            "experiment_name": _dumps(self.redact(experiment_name)),
            "config": _dumps(self.redact(config or {})),
            "hparams": "{}",
        }
        self._metrics: list[str] = []  # each entry serialised once
        self.summary: dict[str, Any] = {"status": "running"}
        self._fd: int | None = None  # the run file as last written, for in-place appends
        self._write()

    def _prepare_directory(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            check_writable(self.directory)
        except OSError as err:
            raise TrackerConfigError(
                f"TRACKER_DIR {str(self.directory)!r} is not a writable directory ({err.strerror or err}); "
                "set TRACKER_DIR to a directory you can write to"
            ) from None
        if self.path.exists():
            try:
                previous = json.loads(self.path.read_text(encoding="utf-8")).get("experiment_name")
            except (OSError, ValueError, AttributeError):
                previous = None  # a damaged file of this run is replaced
            if previous is not None and previous != self.experiment_name:
                raise TrackerConfigError(
                    f"{self.path} already holds experiment {previous!r}, not {self.experiment_name!r}"
                )

    def _write(self) -> None:
        """Replace the run file with the whole document."""
        head = (
            f'{{"experiment_name": {self._head["experiment_name"]}, "config": {self._head["config"]}, '
            f'"hparams": {self._head["hparams"]}, "metrics_log": [{", ".join(self._metrics)}'
        )
        tail = f'], "summary": {_dumps(self.summary)}}}\n'
        write_atomic(self.path, head + tail)
        self._tail = tail.encode()
        self._tail_offset = len(head.encode())  # the byte where the next metrics entry goes
        self._close()
        self._fd = os.open(self.path, os.O_WRONLY)

    def _append_entry(self, entry: str) -> None:
        """Write one more metrics entry and the tail after it, in place when that stays inside one page."""
        piece = f"{', ' if len(self._metrics) > 1 else ''}{entry}".encode()
        data = piece + self._tail
        if self._fd is None or self._tail_offset % mmap.PAGESIZE + len(data) > mmap.PAGESIZE:
            return self._write()
        os.pwrite(self._fd, data, self._tail_offset)
        self._tail_offset += len(piece)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self._head["hparams"] = _dumps(self.redact(hparams))
        self._write()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._metrics.append(_dumps({"step": step} | self.redact(dict(metrics))))
        self._append_entry(self._metrics[-1])

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.summary.update(self.redact(summary))
        self._write()

    def finalize(self) -> None:
        self.summary["status"] = "finished"
        self._write()
        try:
            os.fsync(self._fd)  # the finished document survives a power loss too
        finally:
            self._close()
