"""ntn tracker backend `aim`: local and remote Aim repositories, never blocking training.

`flush()` waits until this process's finished runs are in their repositories (tests, notebooks).
"""

from ntn_tracker_aim.reading import INITIAL, index_runs, read_runs, series, to_record
from ntn_tracker_aim.tracker import AimTracker
from ntn_tracker_aim.uploads import flush

__all__ = ["INITIAL", "AimTracker", "flush", "index_runs", "read_runs", "series", "to_record"]
