"""Experiment tracking: trackers are plugins, discovered through the entry-point group `ntn.trackers`.

from ntn.tracking import start_run

with start_run("mpo2_experiment_seed0", config, backend="file,aim") as run:
    run.log_hparams(hparams)
    ntn.fit(n_epochs=10, callback_init=run.callback_init, callback_epoch=run.callback_epoch)
    run.log_summary({"seed": 0, "loss": ..., "r2": ..., "success": True})
"""

from ntn.tracking.background import Background
from ntn.tracking.base import BaseTracker
from ntn.tracking.budget import wait_delivered
from ntn.tracking.contract import (
    Factory,
    Status,
    Tracker,
    TrackerConfigError,
    TrackerError,
    TrackerSelectionError,
    TrackerValidationError,
    TrackerWarning,
    hookimpl,
    hookspec,
)
from ntn.tracking.discovery import Backend, installed, parse, select
from ntn.tracking.identity import new_id, run_id, run_key
from ntn.tracking.knobs import seconds
from ntn.tracking.readers import closing_line
from ntn.tracking.redact import Redactor
from ntn.tracking.reproduce import CannotReproduce
from ntn.tracking.results import experiment_of, figure_name, study_of
from ntn.tracking.run import TrackedRun, hold, prepare, start_run, validate
from ntn.tracking.signals import Interrupted, stop_on_signals, uninterrupted

__all__ = [
    "Backend",
    "Background",
    "BaseTracker",
    "CannotReproduce",
    "Factory",
    "Interrupted",
    "Redactor",
    "Status",
    "TrackedRun",
    "Tracker",
    "TrackerConfigError",
    "TrackerError",
    "TrackerSelectionError",
    "TrackerValidationError",
    "TrackerWarning",
    "closing_line",
    "experiment_of",
    "figure_name",
    "hold",
    "hookimpl",
    "hookspec",
    "installed",
    "new_id",
    "parse",
    "prepare",
    "run_id",
    "run_key",
    "seconds",
    "select",
    "start_run",
    "stop_on_signals",
    "study_of",
    "uninterrupted",
    "validate",
    "wait_delivered",
]
