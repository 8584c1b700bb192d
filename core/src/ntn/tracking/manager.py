"""Trackers as pluggy plugins: checked against the hookspecs when loaded, called one implementation at a time."""

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


class TrackerManager(pluggy.PluginManager):
    """The hookspecs of `ntn.tracking.hookspecs`; plain methods named after a hook count as implementations
    too (as `BaseTracker` subclasses have them), decorated ones keep their options."""

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

        Honoured: `tryfirst`/`trylast` (the order among a run's trackers) and `specname`. Refused with a
        TrackerValidationError naming the tracker and the hook: wrappers, a `specname` that is no hook,
        arguments the hookspec does not have. A method whose name is close to a hook's but is none
        (`log_metric`, `finalise`) gets a one-line TrackerWarning.
        """
        from ntn.tracking.run import TrackerWarning

        for attribute in dir(tracker):
            opts = self.parse_hookimpl_opts(tracker, attribute)
            if opts is None:
                if not attribute.startswith("_") and callable(getattr(tracker, attribute, None)):
                    close = difflib.get_close_matches(attribute, HOOKS, n=1, cutoff=0.8)
                    if close:
                        warnings.warn(
                            f"tracker {name!r}: method {attribute!r} is not a hook; did you mean {close[0]!r}?",
                            TrackerWarning,
                            stacklevel=4,
                        )
                continue
            self._check(name, attribute, pluggy.HookImpl(tracker, name, getattr(tracker, attribute), opts))
        self.register(tracker, name=name)

    def _check(self, tracker: str, attribute: str, impl: pluggy.HookImpl) -> None:
        hook = impl.opts.get("specname") or attribute
        if impl.hookwrapper or impl.wrapper:
            raise TrackerValidationError(
                f"tracker {tracker!r}: {attribute!r} is a hook wrapper; trackers implement plain hooks only"
            )
        if hook not in HOOKS:
            raise TrackerValidationError(
                f"tracker {tracker!r}: {attribute!r} implements {hook!r}, which is no hook; hooks: {', '.join(HOOKS)}"
            )
        spec = getattr(self.hook, hook).spec
        unknown = [a for a in impl.argnames if a not in spec.argnames]
        if unknown:
            raise TrackerValidationError(
                f"tracker {tracker!r} does not match hook {hook!r}: it takes {', '.join(unknown)}, "
                f"the hookspec passes {hook}({', '.join(spec.argnames)})"
            )

    def implementations(self, hook: str) -> list[pluggy.HookImpl]:
        """The registered implementations of `hook`, in the order pluggy would call them."""
        return list(reversed(getattr(self.hook, hook).get_hookimpls()))
