"""The seed's import path for writing a tracker: `from experiments.trackers import BaseTracker`."""

from ntn.tracking import BaseTracker, hookimpl

__all__ = ["BaseTracker", "hookimpl"]
