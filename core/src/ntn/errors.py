"""The base of ntn's own errors: what the scripts, sweeps and `ntn-trackers` catch and say in one line.

    NtnError
    ├── TrackerError             a tracker backend cannot be used as set up (ntn.tracking.contract)
    │   ├── TrackerSelectionError    unknown, not installed, failing to import
    │   ├── TrackerConfigError       a user's setting for a tracker (or its server) refused
    │   └── TrackerValidationError   a tracker that does not keep the contract
    ├── CannotReproduce          a recorded run that this checkout cannot re-train
    └── the experiments' own:    SettingError, DatasetError, SweepError

A subclass keeps the built-in class it was before (ValueError, TypeError, RuntimeError) as a second base,
so that code catching those still catches it.
"""


class NtnError(Exception):
    """A failure the user can act on; its message is one line naming the value at fault and what is allowed."""
