"""How many threads torch trains with: one, unless you ask for more.

Measured side by side (docs/benchmarks.md, "Threads"): at the sizes the scripts and sweeps train, two
threads on this 2-core machine gain at most 1.7× when it is idle and cost 1.7× to 75× the wall time of
one when another process is running (threads that spin at each small op's barrier), so one thread is the
default everywhere and parallelism comes from processes (a sweep's workers). `TORCH_THREADS=N` asks for
N; torch's own OMP_NUM_THREADS or MKL_NUM_THREADS, when set, is left to torch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

VARIABLE = "TORCH_THREADS"
TORCH_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
Method = TypeVar("Method", bound=Callable[..., Any])


def training_threads() -> int | None:
    """TORCH_THREADS, else None (torch's own count) when one of torch's variables is set, else 1.

    :raises ValueError: TORCH_THREADS is not an integer >= 1, in one line
    """
    text = os.environ.get(VARIABLE, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{VARIABLE}={text!r} must be an integer >= 1")
        return int(text)
    return None if any(os.environ.get(name) for name in TORCH_VARIABLES) else 1


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch at `count` threads for the block (None: as it is), as it was after."""
    import torch  # here: the scripts check TORCH_THREADS before they import torch

    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def with_threads(method: Method) -> Method:
    """A method of an object with a `threads` attribute, run at that many torch threads."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        with torch_threads(self.threads):
            return method(self, *args, **kwargs)

    return run  # type: ignore[return-value]
