"""A plugin's numeric settings from the environment (timeouts, intervals), checked the same way everywhere."""

from __future__ import annotations

import math
import os

from ntn.tracking.contract import TrackerConfigError

MAX_SECONDS = 24 * 3600.0


def parse_seconds(text: str, name: str, maximum: float = MAX_SECONDS) -> float:
    """`text` as a number of seconds in [0, maximum].

    :raises TrackerConfigError: one line naming the setting (`name`), its value and what is allowed
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= maximum):
        raise TrackerConfigError(f"{name}={text!r} must be a number of seconds from 0 to {maximum:g}")
    return value


def seconds(variable: str, default: float, maximum: float = MAX_SECONDS) -> float:
    """A number of seconds in [0, maximum] from the environment variable `variable` (unset or empty:
    `default`).

    :raises TrackerConfigError: one line naming the variable, its value and what is allowed
    """
    text = os.environ.get(variable, "").strip()
    return parse_seconds(text, variable, maximum) if text else default
