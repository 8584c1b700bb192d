"""A plugin's numeric settings from the environment (timeouts, intervals), checked the same way everywhere."""

from __future__ import annotations

import math
import os

from ntn.tracking.discovery import TrackerConfigError

MAX_SECONDS = 24 * 3600.0


def seconds(variable: str, default: float, maximum: float = MAX_SECONDS) -> float:
    """A number of seconds in [0, maximum] from the environment variable `variable` (unset or empty:
    `default`).

    :raises TrackerConfigError: one line naming the variable, its value and what is allowed
    """
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= maximum):
        raise TrackerConfigError(f"{variable}={text!r} must be a number of seconds from 0 to {maximum:g}")
    return value
