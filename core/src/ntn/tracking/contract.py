"""A tracker checked against the hookspecs: which of its methods implement which hook, with which arguments.

pluggy keeps the contract (the hookspecs, the `hookimpl` marker, the signatures); the core calls the
trackers itself, in the order the user named them (`run.py`).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from ntn.tracking import hookspecs

HOOKS = ("log_provenance", "log_hparams", "log_metrics", "log_summary", "log_artifact", "finalize")
_SPECS = pluggy.PluginManager(hookspecs.PROJECT)
_SPECS.add_hookspecs(hookspecs)
_PLAIN = pluggy.HookimplOpts(
    wrapper=False, hookwrapper=False, optionalhook=False, tryfirst=False, trylast=False, specname=None
)


class TrackerValidationError(TypeError):
    """A tracker's hook does not match the hookspec, or uses a pluggy option trackers cannot have."""


class TrackerWarning(UserWarning):
    """A tracker misbehaved (it failed and was disabled for the run, or a method looks like a misspelled hook)."""


@dataclass(frozen=True)
class Hook:
    """One hook of one tracker: the bound method, and the hookspec's arguments it takes."""

    method: Callable[..., Any]
    argnames: tuple[str, ...]

    def __call__(self, arguments: dict[str, Any]) -> None:
        self.method(**{name: arguments[name] for name in self.argnames})


def hooks_of(tracker: Any, name: str) -> dict[str, Hook]:
    """The hooks `tracker` (an instance, or a class to check) implements: its methods named after a hook,
    with or without `@hookimpl`. A method named close to a hook (`log_metric`, `finalise`) gets a warning.

    :raises TrackerValidationError: naming the tracker and the method: arguments the hookspec does not pass,
        or a pluggy option (`tryfirst`, `specname`, wrappers): trackers are called in the order named
    """
    found = {}
    for attribute in dir(tracker):
        method = getattr(tracker, attribute, None)
        if not callable(method) or attribute.startswith("_"):
            continue
        opts = _SPECS.parse_hookimpl_opts(tracker, attribute)  # pluggy's reading of @hookimpl
        if attribute in HOOKS or opts is not None:
            found[attribute] = Hook(method, _arguments(name, attribute, method, opts))
        for close in difflib.get_close_matches(attribute, HOOKS, n=1, cutoff=0.8):
            if close != attribute:
                warnings.warn(
                    f"tracker {name!r}: method {attribute!r} is not a hook; did you mean {close!r}?",
                    TrackerWarning,
                    stacklevel=3,
                )
    return found


def _arguments(tracker: str, attribute: str, method: Callable[..., Any], opts: dict | None) -> tuple[str, ...]:
    """The hookspec's arguments `method` takes (those with a default too), or the one-line refusal."""
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
        impl = pluggy.HookImpl(None, tracker, method, _PLAIN)  # pluggy reads the signature
        passed = getattr(_SPECS.hook, attribute).spec.argnames
        unknown = [a for a in impl.argnames if a not in passed]
        if not unknown:
            return (*impl.argnames, *(a for a in impl.kwargnames if a in passed))
        problem = (
            f"{attribute!r} does not match hook {attribute!r}: it takes {', '.join(unknown)}, "
            f"the hookspec passes {attribute}({', '.join(passed)})"
        )
    raise TrackerValidationError(f"tracker {tracker!r}: {problem}")
