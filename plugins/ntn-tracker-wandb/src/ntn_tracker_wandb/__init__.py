"""ntn tracker backend `wandb`: one W&B run per seed (see tracker.py), read back by reading.py."""

from ntn_tracker_wandb.reading import read_runs
from ntn_tracker_wandb.tracker import WandbTracker, secret_values

__all__ = ["WandbTracker", "read_runs", "secret_values"]
