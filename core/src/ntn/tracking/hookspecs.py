"""The tracker contract: what the core calls on every tracker of a run.

A tracker is any object with some of these methods. Decorating them with `hookimpl` is optional: the
core also accepts plain methods of these names (as `BaseTracker` subclasses have). Every payload is a
JSON-like structure (dicts, lists, str, int, float, bool, None; floats may be NaN or ±Inf) from which
the core has already removed secrets.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "ntn"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def log_provenance(provenance: dict[str, Any]) -> None:
    """Record what made the run, once, before `log_hparams` (optional for a tracker).

    :param provenance: sections code (git commit, branch, dirty), command, versions, machine and data
    """


@hookspec
def log_hparams(hparams: dict[str, Any]) -> None:
    """Record the run's hyperparameters; called once, before any metrics.

    :param hparams: name → value, possibly nested
    """


@hookspec
def log_metrics(metrics: dict[str, float], step: int) -> None:
    """Record the metrics of one step (the initial evaluation is step -1, then epoch 0, 1, …).

    :param metrics: name → value; values may be NaN or ±Inf
    :param step: the step the metrics belong to
    """


@hookspec
def log_summary(summary: dict[str, Any]) -> None:
    """Record the run's final figures; keys of a later call update those of an earlier one.

    :param summary: e.g. seed, loss, r2, success and, for a failed run, error
    """


@hookspec
def log_artifact(path: str, name: str) -> None:
    """Attach a file to the run: the results file, a trained model, the uncommitted diff (optional for a tracker).

    :param path: the file; it may change or go once the hook returns, so copy what you keep
    :param name: its name in the run, a file name without directories, e.g. "model_seed0.pt"
    """


@hookspec
def finalize(status: str, end_time: float) -> None:
    """The run is over: flush, close and release resources. Called exactly once, even after errors.
    An implementation may take both arguments, either, or neither (`finalize(self)`).

    :param status: "finished", "failed" (an exception, or success: false), "interrupted" (a signal) or
        "pruned" (stopped early by a search's pruner: a trial that looked hopeless)
    :param end_time: when the run ended, as Unix time (`time.time()`)
    """
