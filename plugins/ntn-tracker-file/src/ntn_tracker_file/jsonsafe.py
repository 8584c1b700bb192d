"""Turning tracker payloads into strict JSON, and back.

Payloads arrive plain from the core (dicts, lists, str, int, float, bool, None). NaN and ±Inf become
null, and the dict holding them gets `"nonfinite": {key: "NaN" | "Infinity" | "-Infinity"}` beside the
value, so `from_json` can restore them.
"""

from __future__ import annotations

import math
from typing import Any

NONFINITE = "nonfinite"
_SPELLING = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _spell(x: float) -> str:
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def to_json(value: Any) -> Any:
    """A plain payload with NaN and ±Inf as null, named beside them: dict, list, str, int, finite float,
    bool and None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out = {k: to_json(v) for k, v in value.items()}
        nonfinite = {k: _spell(v) for k, v in value.items() if isinstance(v, float) and not math.isfinite(v)}
        if nonfinite:
            out[NONFINITE] = nonfinite
        return out
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    """Undo `to_json`'s null-for-non-finite: restore NaN and ±Inf and drop the `nonfinite` markers."""
    if isinstance(value, dict):
        marks = value.get(NONFINITE)
        restored = {k: from_json(v) for k, v in value.items() if not (k == NONFINITE and isinstance(marks, dict))}
        if isinstance(marks, dict):
            restored.update({k: _SPELLING[s] for k, s in marks.items() if s in _SPELLING})
        return restored
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value
