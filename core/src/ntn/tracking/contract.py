"""The tracker contract, typed and in one place: the hooks the core calls on each run's tracker (`Tracker`),
the optional methods of a backend's factory (`Factory`), the statuses a run ends with, the metric values a
tracker receives, and the errors; and the check of a tracker against it, when its backend is selected.

Checking reads signatures with `inspect.signature` and attributes with `inspect.getattr_static`: it runs
none of a tracker's code (a property is never evaluated). pluggy keeps the markers (`hookimpl`, and
`hookspec` on the hooks below) and reads a `@hookimpl`'s options; the core calls the trackers itself, in
the order the user named them (`run.py`).
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import pluggy

from ntn.errors import NtnError
from ntn.tracking.base import BaseTracker

PROJECT = "ntn"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Status = Literal["finished", "failed", "interrupted", "pruned"]
STATUSES: tuple[str, ...] = get_args(Status)


class TrackerError(NtnError):
    """A tracker backend cannot be used as set up; the base of the three below, which the scripts catch."""


class TrackerSelectionError(TrackerError, ValueError):
    """The selected backends cannot be used (unknown, not installed, or failing to import)."""


class TrackerConfigError(TrackerError, ValueError):
    """A user's setting for a tracker is invalid (e.g. an unwritable directory): raised by a tracker's
    constructor or `check_environment`, it stops the run before training, in one line."""


class TrackerValidationError(TrackerError, TypeError):
    """A tracker or its factory does not keep the contract (a hook's arguments, a pluggy option, a method's)."""


class TrackerWarning(UserWarning):
    """A tracker misbehaved (it failed and was disabled for the run, a metric was refused, a method looks
    like a misspelled hook). Shown in one line, without the core's file and line."""


class Tracker(Protocol):
    """What the core calls on the tracker of one run; a tracker implements any subset. Every payload is plain
    (dicts with str keys, lists, str, int, float, bool, None), secrets removed; floats may be NaN or ±Inf."""

    @hookspec
    def log_provenance(self, provenance: dict[str, Any]) -> None:
        """What made the run (code, command, versions, machine, data), once, before `log_hparams`."""

    @hookspec
    def log_hparams(self, hparams: dict[str, Any]) -> None:
        """The run's hyperparameters (name → value, possibly nested), once, before any metrics."""

    @hookspec
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """The metrics of one step, floats under non-empty names (the initial evaluation is step -1, then
        epoch 0, 1, …); values may be NaN or ±Inf."""

    @hookspec
    def log_summary(self, summary: dict[str, Any]) -> None:
        """The run's final figures, at most once from the core (a failed run's has success false and error)."""

    @hookspec
    def log_artifact(self, path: str, name: str) -> None:
        """Attach the file at `path` as `name` (a file name without directories); copy what you keep now:
        it may change or go once the hook returns."""

    @hookspec
    def finalize(self, status: Status, end_time: float) -> None:
        """The run is over (the status reaches a tracker here only): flush, close, release. Called exactly
        once, even after errors; an implementation may take both arguments, either, or neither."""


class Factory(Protocol):
    """A backend: the entry point's class or callable, which builds one tracker per run. Every method but
    the call is optional; as classmethods (or attributes of a factory function), they are called once per
    process or per launch, never per run."""

    def __call__(self, experiment_name: str, config: dict[str, Any]) -> Tracker:
        """The tracker of one run; raise TrackerConfigError for a user's setting to stop before training."""

    def check_environment(self, run_names: list[str]) -> None:
        """When the backend is selected, before any run: raise TrackerConfigError to refuse a setting."""

    def prepare(self) -> None:
        """Once per process, before training: start what takes long. An exception here is ignored."""

    def hold_runs(self, run_names: list[str]) -> AbstractContextManager[Any]:
        """Hold the runs about to be recorded against other processes while the block lasts."""

    def where(self) -> str:
        """Where the backend keeps its runs, in a few words (`aim: .aim, spooled in .ntn-aim-spool/`)."""

    def source(self) -> str:
        """What `ntn-trackers summary --from` reads this process's runs back from (`tensorboard:runs`)."""

    def wait_delivered(self, timeout: float) -> bool:
        """Wait at most `timeout` s until what this process recorded is delivered; True once it is."""

    def cut_off(self) -> None:
        """The process's exit budget is spent: stop your own client's waits (retries, queues) now."""


def _parameters(function: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(list(inspect.signature(function).parameters)[1:])  # without self


HOOKS: dict[str, tuple[str, ...]] = {
    name: _parameters(method) for name, method in vars(Tracker).items() if hasattr(method, f"{PROJECT}_spec")
}
OPTIONAL: dict[str, tuple[str, ...]] = {
    name: _parameters(method) for name, method in vars(Factory).items() if inspect.isfunction(method) and name[0] != "_"
}
_MARKERS = pluggy.PluginManager(PROJECT)  # reads @hookimpl's options (`parse_hookimpl_opts`)


@dataclass(frozen=True)
class Hook:
    """One hook of one tracker: the bound method, and the hookspec's arguments it takes."""

    method: Callable[..., Any]
    argnames: tuple[str, ...]

    def __call__(self, arguments: dict[str, Any]) -> None:
        self.method(**{name: arguments[name] for name in self.argnames})


def _routine(attribute: Any) -> bool:
    """Whether an attribute read with getattr_static is a method (getattr then only binds it; a property,
    or any other descriptor that would run code, is not one)."""
    if isinstance(attribute, staticmethod | classmethod) or inspect.isroutine(attribute):
        return True
    return callable(attribute) and not hasattr(type(attribute), "__get__")


def hooks_of(tracker: Any, name: str) -> dict[str, Hook]:
    """The hooks `tracker` (an instance, or a class to check) implements: its methods named after a hook,
    with or without `@hookimpl`. A method named close to a hook (`log_metric`, `finalise`) gets a warning.

    :raises TrackerValidationError: naming the tracker and the method: arguments the hookspec does not pass,
        or a pluggy option (`tryfirst`, `specname`, wrappers): trackers are called in the order named
    """
    found, near = {}, {}
    for attribute in dir(tracker):
        static = inspect.getattr_static(tracker, attribute, None)
        if attribute.startswith("_") or not _routine(static):
            continue
        opts = _MARKERS.parse_hookimpl_opts(tracker, attribute)  # pluggy's reading of @hookimpl
        if attribute in HOOKS or opts is not None:
            unbound = isinstance(tracker, type) and inspect.isfunction(static)  # a class's plain method: self
            found[attribute] = Hook(getattr(tracker, attribute), _arguments(name, attribute, tracker, unbound, opts))
        for close in difflib.get_close_matches(attribute, HOOKS, n=1, cutoff=0.8):
            if close != attribute:
                near[attribute] = close
    for attribute, close in near.items():  # a helper beside the hook it is named after is no misspelling
        if close not in found or inspect.getattr_static(tracker, close) is vars(BaseTracker).get(close):  # no-op
            warn(f"tracker {name!r}: method {attribute!r} is not a hook; did you mean {close!r}?")
    return found


def _arguments(
    tracker: str, attribute: str, owner: Any, unbound: bool, opts: Mapping[str, Any] | None
) -> tuple[str, ...]:
    """The hookspec's arguments the method takes (those with a default too), or the one-line refusal."""
    options = sorted(k for k, v in (opts or {}).items() if v)
    if "wrapper" in options or "hookwrapper" in options:
        problem = f"{attribute!r} is a hook wrapper; trackers implement plain hooks only"
    elif options:
        problem = (
            f"{attribute!r} uses @hookimpl({', '.join(f'{o}=...' for o in options)}); trackers implement plain hooks "
            "named after the hook, and are called in the order TRACKER_BACKEND names them"
        )
    elif attribute not in HOOKS:
        problem = f"{attribute!r} is marked @hookimpl but is no hook; hooks: {', '.join(HOOKS)}"
    else:
        passed = HOOKS[attribute]
        parameters = list(_signature(tracker, attribute, getattr(owner, attribute)).parameters.values())[unbound:]
        taken = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name in passed]
        unknown = [
            p.name
            for p in parameters
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p not in taken
        ]
        if not unknown:
            return tuple(p.name for p in taken)
        problem = (
            f"{attribute!r} does not match hook {attribute!r}: it takes {', '.join(unknown)}, "
            f"the hookspec passes {attribute}({', '.join(passed)})"
        )
    raise TrackerValidationError(f"tracker {tracker!r}: {problem}")


def _signature(tracker: str, attribute: str, method: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(method)
    except (TypeError, ValueError) as err:  # a callable whose signature Python cannot tell
        raise TrackerValidationError(
            f"tracker {tracker!r}: the signature of {attribute!r} cannot be read ({err})"
        ) from None


def optional(factory: Any, name: str) -> Callable[..., Any] | None:
    """The factory's optional method `name` of the contract (`Factory`), bound; None when it has none.
    Read with getattr_static first: a property or other attribute is no method, and never runs."""
    assert name in OPTIONAL, name
    return getattr(factory, name) if _routine(inspect.getattr_static(factory, name, None)) else None


def check_factory(factory: Any, backend: str) -> None:
    """The factory's optional methods take the contract's arguments (`Factory`): e.g. `where` must be a
    classmethod, `check_environment` take the run names.

    :raises TrackerValidationError: naming the backend and the method, in one line
    """
    for name, arguments in OPTIONAL.items():
        method = optional(factory, name)
        if method is None:
            continue
        try:
            _signature(backend, name, method).bind(*arguments)
        except TypeError:
            raise TrackerValidationError(
                f"tracker {backend!r}: {name} takes {inspect.signature(method)}; the core calls "
                f"{name}({', '.join(arguments)}) on the factory (a classmethod)"
            ) from None


def as_metrics(metrics: Mapping[Any, Any]) -> tuple[dict[str, float], list[str]]:
    """`metrics` as the contract gives them to trackers: floats (finite or not) under non-empty string names,
    ints and bools converted; and the refused entries, one short description each."""
    kept: dict[str, float] = {}
    refused: list[str] = []
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            refused.append(f"{name!r} (a name must be a non-empty string)")
        elif isinstance(value, bool | int | float):
            try:
                kept[name] = float(value)
            except OverflowError:  # an int beyond a float's range
                refused.append(f"{name!r}={value!r} (beyond a float's range)")
        else:
            refused.append(f"{name!r}={value!r} ({type(value).__name__}, not a number)")
    return kept, refused


def warn(message: str) -> None:
    """A TrackerWarning, shown in one line (`TrackerWarning: message`), without the core's file and line."""
    warnings.warn(message, TrackerWarning, stacklevel=2)


_format = warnings.formatwarning


def _one_line(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    if issubclass(category, TrackerWarning):
        return f"{category.__name__}: {message}\n"
    return _format(message, category, filename, lineno, line)


warnings.formatwarning = _one_line  # documented as replaceable; other categories keep their format
