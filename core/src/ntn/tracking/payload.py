"""Turning payloads into plain Python values that any backend can store.

numpy and torch scalars and arrays become numbers and lists, paths become strings, tuples and sets
become lists, mapping keys become strings, and anything else becomes its `str()` — never silently
dropped. Floats keep their value, NaN and ±Inf included; what a backend does with those is its own
choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import Any

_PLAIN = frozenset({float, int, str, bool, type(None)})


def to_builtin(value: Any) -> Any:
    """A structure of dict (str keys), list, str, int, float, bool and None."""
    if type(value) in _PLAIN or isinstance(value, bool | int | float | str):  # the set: a fast path
        return value
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_builtin(v) for v in value]
    if isinstance(value, PathLike):
        return str(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, torch tensors
    if callable(tolist):
        try:
            return to_builtin(tolist())
        except Exception:  # an object whose tolist() is something else entirely
            pass
    return str(value)
