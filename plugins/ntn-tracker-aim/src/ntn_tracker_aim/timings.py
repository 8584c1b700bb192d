"""The two timings of delivery, which the training process and its uploaders both read."""

from __future__ import annotations

from ntn.tracking import seconds

EXIT_TIMEOUT_ENV = "NTN_AIM_EXIT_TIMEOUT"
DEFAULT_EXIT_TIMEOUT_S = 30.0
INTERVAL_ENV = "NTN_AIM_DELIVERY_INTERVAL"
DEFAULT_INTERVAL_S = 10.0


def delivery_interval() -> float:
    """Seconds between delivery rounds: $NTN_AIM_DELIVERY_INTERVAL, default 10."""
    return seconds(INTERVAL_ENV, DEFAULT_INTERVAL_S)


def exit_timeout() -> float:
    """Seconds to wait for delivery at exit: $NTN_AIM_EXIT_TIMEOUT, default 30."""
    return seconds(EXIT_TIMEOUT_ENV, DEFAULT_EXIT_TIMEOUT_S)
