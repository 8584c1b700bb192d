"""BaseTracker: a tracker with no-op hooks, to subclass with plain methods (no decorator needed)."""

from __future__ import annotations

from typing import Any


class BaseTracker:
    """Override any of these methods; the core calls them for each run.

    The core builds one instance per run as `YourTracker(experiment_name=..., config=...)`.
    """

    def __init__(self, experiment_name: str = "", config: dict[str, Any] | None = None) -> None:
        self.experiment_name = experiment_name
        self.config = config or {}

    def log_provenance(self, provenance: dict[str, Any]) -> None:
        pass

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_summary(self, summary: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: str, name: str) -> None:
        pass

    def finalize(self, status: str = "finished", end_time: float | None = None) -> None:
        """The run is over; `status` is "finished", "failed", "interrupted" or "pruned" (stopped
        early by a search), `end_time` a Unix time.
        An override may leave both out: `def finalize(self)`."""
