"""Why runs failed, said in a closing line, and whether training them again can help.

A run's training is seeded: trained again with the same code, settings and seed, a run that collapsed, met a
singular system or non-finite values fails the same way. What may pass is what came from outside its
training: a tracker that could not complete its record, a worker process that ended (killed, out of memory).
"""

from __future__ import annotations

import re
from typing import Any

from experiments.seed_run import trained_but_incomplete

PASSING = (  # how the errors of runs that failed from outside their training begin
    "the worker process training it ended",  # experiments.workers: killed, or the machine ran out of memory
    "MemoryError",
    "OutOfMemoryError",  # torch's, on a GPU
)
NUMBER = re.compile(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?")


def fails_again(entry: dict[str, Any]) -> bool:
    """Whether a failed run fails the same way when trained again with the same code and settings."""
    error = str(entry.get("error"))
    return not trained_but_incomplete(entry) and not error.startswith(PASSING)


def reasons(failed: list[tuple[str, dict[str, Any]]], shown: int = 2) -> str:
    """The errors of `failed` runs ((experiment or "", results entry) pairs), most common first: each error
    once (its numbers aside) with the runs that gave it; past `shown` errors, how many others."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, entry in failed:
        groups.setdefault(NUMBER.sub("#", str(entry.get("error"))), []).append((name, entry))
    ordered = sorted(groups.values(), key=len, reverse=True)
    said = [f'{_runs(runs)}: "{runs[0][1].get("error")}"' for runs in ordered[:shown]]
    others = len(ordered) - shown
    return "; ".join(said + ([f"{others} other error{'s' * (others > 1)}"] if others > 0 else []))


def _runs(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """ "seeds 0, 1" (one experiment), or the first run and how many others."""
    seeds = ", ".join(str(entry["seed"]) for _, entry in runs)
    if len({name for name, _ in runs}) == 1:
        return f"{runs[0][0]} seed{'s' * (len(runs) > 1)} {seeds}".lstrip()
    return f"{runs[0][0]} seed {runs[0][1]['seed']} and {len(runs) - 1} other run{'s' * (len(runs) > 2)}"
