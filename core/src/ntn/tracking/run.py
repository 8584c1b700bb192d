"""The life of one tracked run: build its trackers, hand them redacted payloads, contain their failures."""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ntn.tracking.discovery import Backend, TrackerConfigError, select
from ntn.tracking.manager import HOOKS, TrackerManager, TrackerValidationError
from ntn.tracking.redact import Redactor


class TrackerWarning(UserWarning):
    """A tracker failed and was disabled for the rest of the run; training goes on."""


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by a signal: SIGINT (Ctrl-C), SIGTERM or SIGHUP."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class _Deferral:
    """While tracker code runs, a signal's exception waits until it returns: an exception raised between
    two of a tracker's statements (a write done, its bookkeeping not) would leave its records corrupt."""

    depth = 0
    pending: Interrupted | None = None

    @classmethod
    def leave(cls) -> None:
        """The end of tracker code (entered with `depth += 1`): raise what arrived meanwhile."""
        cls.depth -= 1
        if cls.depth == 0 and cls.pending is not None:
            pending, cls.pending = cls.pending, None
            raise pending

    @classmethod
    @contextmanager
    def around_trackers(cls) -> Iterator[None]:
        cls.depth += 1
        try:
            yield
        finally:
            cls.leave()


def _interrupt(signum: int, frame: Any) -> None:
    error = Interrupted(signal.Signals(signum).name)
    if _Deferral.depth:
        _Deferral.pending = _Deferral.pending or error
        return
    raise error


def stop_on_signals() -> dict[int, Any]:
    """Turn SIGINT, SIGTERM and SIGHUP into `Interrupted` (a KeyboardInterrupt), raised in the main thread
    where no tracker is running: one that arrives during a hook is raised when the hook returns. A run
    ended that way records status "interrupted". Returns the previous handlers (for `signal.signal`)."""
    names = [name for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    return {getattr(signal, name): signal.signal(getattr(signal, name), _interrupt) for name in names}


def status_after(err: BaseException | None, summary: dict[str, Any]) -> str:
    """A finished run's status: "interrupted" (a signal), "failed" (an exception, or success: false)
    or "finished"."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return "failed" if err is not None or summary.get("success") is False else "finished"


def _invoke(impl: Any, arguments: dict[str, Any]) -> None:
    """Call one hook implementation as pluggy would: the arguments it names, those with a default too."""
    impl.function(
        *[arguments[name] for name in impl.argnames], **{n: arguments[n] for n in impl.kwargnames if n in arguments}
    )


class TrackedRun:
    """One run (one seed) and the tracker instances that record it, registered with a plugin manager.

    Every hook call goes to each tracker's implementation separately: a tracker that raises is disabled
    for the rest of the run, a TrackerWarning names it, and `failures` lists it; the other trackers and
    training go on. `finalize` still reaches it.
    """

    def __init__(self, experiment_name: str, config: dict[str, Any], backends: Sequence[Backend]) -> None:
        self.redact = Redactor()
        experiment_name = self.experiment_name = self.redact.text(experiment_name)  # it names files and runs
        self.config = self.redact(config)
        self.backends = [b.name for b in backends]
        self.failures: list[dict[str, str]] = []
        self.summary: dict[str, Any] = {}
        self.active: list[str] = []  # names of the trackers still receiving calls
        self.manager = TrackerManager()
        for backend in backends:
            try:
                with _Deferral.around_trackers():
                    tracker = backend.factory(experiment_name=experiment_name, config=self.config)
                    self.manager.add_tracker(tracker, backend.name)
            except (TrackerConfigError, TrackerValidationError) as err:
                self.finalize("failed")  # the trackers built so far
                raise type(err)(self.redact.text(str(err))) from None
            except Exception as err:
                self._fail(backend.name, "__init__", err)
                continue
            self.active.append(backend.name)
        self._impls = {hook: self.manager.implementations(hook) for hook in HOOKS}  # registrations are final

    def _fail(self, tracker: str, hook: str, err: BaseException) -> None:
        error = self.redact.text(f"{type(err).__name__}: {err}")
        self.failures.append({"tracker": tracker, "hook": hook, "error": error})
        warnings.warn(
            f"tracker {tracker!r} failed in {hook} and is disabled for this run: {error}", TrackerWarning, stacklevel=3
        )

    def _call(self, hook: str, **kwargs: Any) -> None:
        _Deferral.depth += 1  # inline rather than a context manager: this runs for every metrics step
        try:
            for impl in self._impls[hook]:
                if impl.plugin_name not in self.active:
                    continue
                try:
                    _invoke(impl, kwargs)
                except Exception as err:
                    self._fail(impl.plugin_name, hook, err)
                    self.active.remove(impl.plugin_name)
        finally:
            _Deferral.leave()

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self._call("log_hparams", hparams=self.redact(hparams))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call("log_metrics", metrics=self.redact(metrics), step=int(step))

    def log_summary(self, summary: dict[str, Any]) -> None:
        summary = self.redact(summary)
        self.summary.update(summary)
        self._call("log_summary", summary=summary)

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> None:
        """Attach the file at `path` to the run as `name` (default: its file name), in the trackers that keep files."""
        name = os.path.basename(path) if name is None else name
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"artifact name {name!r} must be a file name without directories")
        self._call("log_artifact", path=os.fspath(path), name=name)

    def finalize(self, status: str = "finished") -> None:
        """Call `finalize` once on every tracker that was built, also on those disabled by a failure in
        another hook, with the run's status and end time; each call is isolated (a failing one is
        reported, the others still run)."""
        arguments = {"status": status, "end_time": time.time()}
        with _Deferral.around_trackers():
            for impl in self.manager.implementations("finalize"):
                try:
                    _invoke(impl, arguments)
                except Exception as err:
                    self._fail(impl.plugin_name, "finalize", err)
            for name, _ in self.manager.list_name_plugin():
                self.manager.unregister(name=name)
            self.active = []

    # ---- the two NTN.fit callbacks ----------------------------------------------------------

    def callback_init(self, scores: dict[str, float], info: dict[str, Any]) -> None:
        """NTN's callback_init: the initial scores at step -1."""
        self.log_metrics(dict(scores), step=-1)

    def callback_epoch(self, epoch: int, scores: dict[str, float], info: dict[str, Any]) -> None:
        """NTN's callback_epoch: the epoch's scores with reg_loss, jitter and weight_norm_sq, at step = epoch."""
        extra = {k: info[k] for k in ("reg_loss", "jitter", "weight_norm_sq") if k in info}
        self.log_metrics(dict(scores) | extra, step=epoch)


@contextmanager
def start_run(
    experiment_name: str,
    config: dict[str, Any] | None = None,
    backend: str | Sequence[str] | Sequence[Backend] | None = None,
) -> Iterator[TrackedRun]:
    """Track one run with the selected backends (argument, else TRACKER_BACKEND, else "file").

    :param backend: backend names, or the Backends that `validate` returned (many runs of one
        experiment then look up and import the plugins once)

    Before `finalize`, the summary gets the run's `status` (`status_after`): "finished", "failed" (the
    body raised, or the summary says success: false) or "interrupted" (KeyboardInterrupt, `Interrupted`).
    If the body raises, the summary also records success: false and error: "<Type>: <message>", and the
    exception propagates. `finalize` always runs, on every tracker that was built, and receives that
    status and the end time.
    """
    run = TrackedRun(experiment_name, dict(config or {}), _resolve(backend))
    status = "failed"  # until the body has ended one way or another
    try:
        yield run
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            error = f"interrupted by {getattr(err, 'signal_name', 'SIGINT')}"
        else:
            error = f"{type(err).__name__}: {err}"
        status = status_after(err, run.summary)
        run.log_summary({"status": status, "success": False, "error": error})
        raise
    else:
        status = status_after(None, run.summary)
        run.log_summary({"status": status})
    finally:
        run.finalize(status)


def _resolve(backend: str | Sequence[str] | Sequence[Backend] | None) -> list[Backend]:
    if backend is not None and not isinstance(backend, str) and all(isinstance(b, Backend) for b in backend):
        return list(backend)
    return select(backend)


def validate(backend: str | Sequence[str] | None = None, run_names: Sequence[str] = ()) -> list[Backend]:
    """Select the backends and check each tracker class against the hookspecs, before any training; a
    factory with a `check_environment(run_names)` (class)method has it called, to refuse its
    configuration, or the runs about to be recorded, now.

    Factories that are not classes can only be checked when a run builds them.

    :param run_names: the runs that will be started (e.g. one per seed), for `check_environment`
    :raises TrackerConfigError: from a factory's `check_environment`, secrets redacted
    """
    backends = select(backend)
    for b in backends:
        if isinstance(b.factory, type):  # pluggy reads the methods' signatures off the class itself
            TrackerManager().add_tracker(b.factory, b.name)
        check = getattr(b.factory, "check_environment", None)
        if callable(check):
            try:
                check([Redactor().text(name) for name in run_names])
            except TrackerConfigError as err:
                raise TrackerConfigError(Redactor().text(str(err))) from None
    return backends
