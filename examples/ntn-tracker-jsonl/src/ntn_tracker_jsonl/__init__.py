"""Example tracker plugin: one JSON line per hook call in $JSONL_DIR/<experiment_name>.jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ntn.tracking import hookimpl


class JsonlTracker:
    def __init__(self, experiment_name: str, config: dict[str, Any]) -> None:
        directory = Path(os.environ.get("JSONL_DIR", "."))
        directory.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in experiment_name)
        self._file = open(directory / f"{safe}.jsonl", "w", encoding="utf-8")  # closed in finalize
        self._write("config", config=config)

    def _write(self, event: str, **payload: Any) -> None:
        self._file.write(json.dumps({"event": event, **payload}, default=str) + "\n")
        self._file.flush()

    @hookimpl
    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self._write("hparams", hparams=hparams)

    @hookimpl
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._write("metrics", step=step, metrics=metrics)

    @hookimpl
    def log_summary(self, summary: dict[str, Any]) -> None:
        self._write("summary", summary=summary)

    @hookimpl
    def finalize(self, status: str, end_time: float) -> None:
        self._write("finalize", status=status, end_time=end_time)  # the run's status comes only here
        self._file.close()
