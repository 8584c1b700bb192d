"""Checking a tracker against the hookspecs with pluggy, which also accepts undecorated tracker methods."""

from __future__ import annotations

from typing import Any

import pluggy

from ntn.tracking import hookspecs

HOOKS = ("log_hparams", "log_metrics", "log_summary", "finalize")


class TrackerValidationError(TypeError):
    """A tracker's hook does not match the hookspec."""


class TrackerManager(pluggy.PluginManager):
    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> pluggy.HookimplOpts | None:
        if name not in HOOKS:  # trackers implement these hooks only; skip inspecting everything else
            return None
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and callable(getattr(plugin, name, None)):
            return pluggy.HookimplOpts(
                wrapper=False, hookwrapper=False, optionalhook=False, tryfirst=False, trylast=False, specname=None
            )
        return opts

    def add_tracker(self, tracker: Any, name: str) -> None:
        """Register `tracker`, or raise TrackerValidationError naming it and the mismatching hook."""
        try:
            self.register(tracker, name=name)
        except pluggy.PluginValidationError as err:
            hook = next((h for h in HOOKS if f"hook {h!r}" in str(err)), "?")
            detail = str(err).splitlines()[-1]
            raise TrackerValidationError(f"tracker {name!r} does not match hook {hook!r}: {detail}") from None


_checked: dict[type, dict[str, tuple[str, ...]]] = {}  # tracker class → what hook_arguments returned


def hook_arguments(tracker: Any, name: str) -> dict[str, tuple[str, ...]]:
    """The hooks `tracker` (an instance, or a class) implements, each with the arguments it takes.

    Raises TrackerValidationError naming the tracker (as `name`) and the mismatching hook. A class is
    checked once; an object with hooks of its own (a module, a namespace) every time.
    """
    kind = tracker if isinstance(tracker, type) else type(tracker)
    own = not isinstance(tracker, type) and any(hook in getattr(tracker, "__dict__", {}) for hook in HOOKS)
    if own or kind not in _checked:
        manager = TrackerManager()
        manager.add_tracker(tracker, name)
        arguments = {hook: impl.argnames for hook in HOOKS for impl in getattr(manager.hook, hook).get_hookimpls()}
        if own:
            return arguments
        _checked[kind] = arguments
    return _checked[kind]
