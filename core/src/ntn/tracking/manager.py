"""Trackers as pluggy plugins: each checked against the hookspecs when it is registered."""

from __future__ import annotations

import difflib
import warnings
from typing import Any

import pluggy

from ntn.tracking import hookspecs

HOOKS = ("log_hparams", "log_metrics", "log_summary", "log_artifact", "finalize")
PLAIN = pluggy.HookimplOpts(
    wrapper=False, hookwrapper=False, optionalhook=False, tryfirst=False, trylast=False, specname=None
)


class TrackerValidationError(TypeError):
    """A tracker's hook does not match the hookspec, or uses a pluggy option trackers cannot have."""


class TrackerWarning(UserWarning):
    """A tracker misbehaved (it failed and was disabled for the run, or a method looks like a misspelled hook)."""


class TrackerManager(pluggy.PluginManager):
    """The hookspecs of `ntn.tracking.hookspecs`; a plain method named after a hook (as `BaseTracker`
    subclasses have them) implements it too, a decorated one keeps its options."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> pluggy.HookimplOpts | None:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in HOOKS and callable(getattr(plugin, name, None)):
            return PLAIN
        return opts

    def add_tracker(self, tracker: Any, name: str) -> None:
        """Register `tracker` (an instance, or a class to check) under `name`.

        Honoured: `tryfirst`/`trylast` and `specname`. Refused with a TrackerValidationError naming the
        tracker and the hook: wrappers, a `specname` that is no hook, arguments the hookspec lacks. A
        method named close to a hook (`log_metric`, `finalise`) gets a one-line TrackerWarning.
        """
        for attribute in dir(tracker):
            opts = self.parse_hookimpl_opts(tracker, attribute)
            if opts is not None:
                self._check(name, attribute, pluggy.HookImpl(tracker, name, getattr(tracker, attribute), opts))
            elif not attribute.startswith("_") and callable(getattr(tracker, attribute, None)):
                for close in difflib.get_close_matches(attribute, HOOKS, n=1, cutoff=0.8):
                    warnings.warn(
                        f"tracker {name!r}: method {attribute!r} is not a hook; did you mean {close!r}?",
                        TrackerWarning,
                        stacklevel=4,
                    )
        self.register(tracker, name=name)

    def _check(self, tracker: str, attribute: str, impl: pluggy.HookImpl) -> None:
        hook = impl.opts.get("specname") or attribute
        if impl.hookwrapper or impl.wrapper:
            problem = f"{attribute!r} is a hook wrapper; trackers implement plain hooks only"
        elif hook not in HOOKS:
            problem = f"{attribute!r} implements {hook!r}, which is no hook; hooks: {', '.join(HOOKS)}"
        else:
            passed = getattr(self.hook, hook).spec.argnames
            unknown = [a for a in impl.argnames if a not in passed]
            if not unknown:
                return
            problem = (
                f"{attribute!r} does not match hook {hook!r}: it takes {', '.join(unknown)}, "
                f"the hookspec passes {hook}({', '.join(passed)})"
            )
        raise TrackerValidationError(f"tracker {tracker!r}: {problem}")

    def implementations(self, hook: str) -> list[pluggy.HookImpl]:
        """The registered implementations of `hook`, in the order pluggy would call them."""
        return list(reversed(getattr(self.hook, hook).get_hookimpls()))
