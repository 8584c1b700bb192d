"""ntn tracker backend `aim`: local and remote Aim repositories, with proxy authentication headers."""

from ntn_tracker_aim.reading import index_runs, read_runs, series, to_record
from ntn_tracker_aim.tracker import INIT_CONTEXT, AimTracker

__all__ = ["INIT_CONTEXT", "AimTracker", "index_runs", "read_runs", "series", "to_record"]
