"""ntn tracker backend `mlflow`: one MLflow run per seed (see tracker.py), read back by reading.py."""

from ntn_tracker_mlflow.reading import read_runs
from ntn_tracker_mlflow.tracker import MlflowTracker, secret_values

__all__ = ["MlflowTracker", "read_runs", "secret_values"]
