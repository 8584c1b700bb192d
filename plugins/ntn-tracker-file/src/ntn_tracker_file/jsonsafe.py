"""Turning tracker payloads into strict JSON, and back.

- NaN and ±Inf become null, and the dict holding them gets `"nonfinite": {key: "NaN" | "Infinity" |
  "-Infinity"}` beside the value, so `load` can restore them;
- numpy and torch scalars and arrays, paths, tuples and sets become numbers, lists and strings;
  anything else becomes its `str()`, never silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from os import PathLike
from typing import Any

NONFINITE = "nonfinite"
_SPELLING = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _spell(x: float) -> str:
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def to_json(value: Any) -> Any:
    """A structure of dict, list, str, int, finite float, bool and None."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        nonfinite: dict[str, str] = {}
        for k, v in value.items():
            key = str(k)
            v = _plain(v)
            if isinstance(v, float) and not math.isfinite(v):
                nonfinite[key] = _spell(v)
            out[key] = to_json(v)
        if nonfinite:
            out[NONFINITE] = nonfinite
        return out
    value = _plain(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return to_json(value)
    return str(value)


def _plain(value: Any) -> Any:
    """numpy / torch values as Python ones, paths as strings; everything else unchanged."""
    if isinstance(value, PathLike):
        return str(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, torch tensors
    if callable(tolist) and not isinstance(value, list | tuple | str | Mapping):
        try:
            return tolist()
        except Exception:
            return value
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
