"""Results files: an experiment's multi-seed results (`run_*.sh`) and a sweep's record (`run_sweep.sh`).

Checked before training (a regular file in a writable directory, outside TRACKER_DIR, holding nothing
but this experiment's or this sweep's own results), locked while written, written atomically, and
without the environment's secrets.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ntn.files import Held, check_regular, check_writable, hold, release, write_atomic
from ntn.tracking import Redactor


def redact(text: str) -> str:
    """`text` without the secrets of the environment (ntn.tracking.Redactor), for stderr."""
    return Redactor().text(text)


def stats(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and population standard deviation; (None, None) for no values."""
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def write_json(path: Path, document: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(Redactor()(document), indent=2, allow_nan=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    """The document at `path`; None when there is none.

    :raises OSError, ValueError: it cannot be read, or is not JSON
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def check_output(path: Path, setting: str, owns: Callable[[Any], bool], what: str, tracker_dir: str) -> None:
    """Fail now, before training, if `path` cannot take this run's results later; creates nothing.

    :param setting: the setting that named it (OUTPUT_FILE, --output), for the message
    :param owns: whether a document already at `path` is `what` (it is then replaced, or resumed)
    :param tracker_dir: the TRACKER_DIR setting, whose run files OUTPUT_FILE may not sit among
    :raises OSError: one line naming the setting and why
    """
    shown = f"{setting}={str(path)!r}"
    if path.is_dir():
        raise OSError(f"{shown} is a directory; name a file")
    check_regular(path, shown)
    directory = path.parent
    if not directory.is_dir():
        raise OSError(f"{shown}: directory {str(directory)!r} does not exist")
    if Path(tracker_dir).is_dir() and directory.resolve() == Path(tracker_dir).resolve():
        raise OSError(f"{shown} is inside TRACKER_DIR {tracker_dir!r}, which holds run files; name another")
    try:
        check_writable(directory)
    except OSError as err:
        raise OSError(f"{shown}: directory {str(directory)!r} is not writable ({err.strerror})") from None
    try:
        document = read_json(path)
    except (OSError, ValueError):
        document = ...
    if document is not None and not owns(document):
        raise OSError(f"{shown} holds something other than {what}; move it away or name another file")


@contextlib.contextmanager
def held(path: Path, setting: str) -> Iterator[None]:
    """Lock the results file `path` while the block runs (its hidden `.lock` beside it).

    :raises OSError: another process writes it (naming the process), or the lock file is no regular file
    """
    lock = path.parent / f".{path.name}.lock"
    try:
        fd = hold(lock)
    except Held as err:
        raise Held(f"{setting}={str(path)!r} is being written by {err}; wait for it, or name another file") from None
    try:
        yield
    finally:
        release(lock, fd)
