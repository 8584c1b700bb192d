"""ntn-tracker-tensorboard: each run (seed) a TensorBoard run in $TENSORBOARD_DIR (default ./tb_logs)."""

from ntn_tracker_tensorboard.tracker import TensorBoardTracker

__all__ = ["TensorBoardTracker"]
