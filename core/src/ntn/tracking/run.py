"""The life of one tracked run: build its trackers, hand them plain redacted payloads, contain their failures."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ntn.tracking import budget
from ntn.tracking.contract import (
    Hook,
    Status,
    TrackerConfigError,
    TrackerValidationError,
    as_metrics,
    check_factory,
    hooks_of,
    optional,
    warn,
)
from ntn.tracking.discovery import Backend, select
from ntn.tracking.provenance import Provenance, gather
from ntn.tracking.redact import Redactor
from ntn.tracking.signals import Deferral

SECRET_NAME = "the run's name holds the value of a secret variable (a token, a password); name the run otherwise"


class TrackedRun:
    """One run (one seed) and the trackers that record it, called in the order their backends were named.

    Each hook call reaches each tracker on its own: one that raises is disabled for the rest of the run,
    named in a TrackerWarning and listed in `failures`; the others and training go on. `finalize` still
    reaches it.
    """

    def __init__(self, experiment_name: str, config: dict[str, Any], backends: Sequence[Backend]) -> None:
        self.redact = Redactor()
        if self.redact.holds_secret(experiment_name):  # it names files and runs: refused, never altered or shown
            raise ValueError(SECRET_NAME)
        budget.exit_timeout()  # a bad $NTN_TRACKER_EXIT_TIMEOUT: one line, before training
        self.experiment_name = experiment_name
        self.config = self.redact(config)
        self.backends = [b.name for b in backends]
        self.failures: list[dict[str, str]] = []
        self.summary: dict[str, Any] = {}
        self.summary_logged = False  # the body logged a summary: the core adds none
        self.status = "running"  # then the status `finalize` gave the trackers
        self.trackers: dict[str, dict[str, Hook]] = {}  # name → its hooks, in the order named
        self.active: list[str] = []  # names of the trackers still receiving calls
        self.refused: set[str] = set()  # metric names refused in this run (each warned about once)
        for backend in backends:
            try:
                with Deferral.around_trackers():
                    budget.used(backend.name, backend.factory)
                    tracker = backend.factory(experiment_name=experiment_name, config=self.config)
                    self.trackers[backend.name] = hooks_of(tracker, backend.name)
            except (TrackerConfigError, TrackerValidationError) as err:
                self.finalize("failed")  # the trackers built so far
                raise type(err)(self.redact.text(str(err))) from None
            except Exception as err:
                self._fail(backend.name, "__init__", err, backend.factory)
                continue
            except BaseException:  # a signal while they are built: those built so far end the run
                self.finalize("interrupted")
                raise
            self.active.append(backend.name)
        self.distributions = {b.name: b.distribution for b in backends if b.name in self.trackers}

    def log_provenance(self, provenance: Provenance) -> None:
        """What made the run to `log_provenance` (with the trackers' distributions), its files (their
        secrets redacted when gathered: `ntn.tracking.provenance`) to `log_artifact`; `start_run` calls it first."""
        provenance = provenance.merged(versions={"trackers": self.distributions})
        self._call("log_provenance", provenance=self.redact(provenance.record))
        if not any("log_artifact" in self.trackers[name] for name in self.active):
            return
        with tempfile.TemporaryDirectory() as directory:
            for name, content in provenance.files.items():
                path = os.path.join(directory, name)
                with open(path, "wb") as file:
                    file.write(content)
                self.log_artifact(path, name)

    def _fail(self, tracker: str, hook: str, err: BaseException, code: Any) -> None:
        """:param code: the tracker's callable that raised (its factory, a hook's method): where it lives"""
        error = self.redact.text(f"{type(err).__name__}: {err}")
        self.failures.append({"tracker": tracker, "hook": hook, "error": error})
        where = self.redact.text(_raised_at(err, code))
        warn(
            f"tracker {tracker!r} failed in {hook} of run {self.experiment_name!r} and is disabled for it: {error}"
            + (f" (raised at {where})" if where else "")
        )

    def _call(self, hook: str, **arguments: Any) -> None:
        Deferral.depth += 1  # inline rather than a context manager: this runs for every metrics step
        try:
            for name in list(self.active):
                implementation = self.trackers[name].get(hook)
                if implementation is None:
                    continue
                try:
                    implementation(arguments)
                except Exception as err:
                    self._fail(name, hook, err, implementation.method)
                    self.active.remove(name)
        finally:
            Deferral.leave()

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self._call("log_hparams", hparams=self.redact(hparams))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """The metrics as the contract says (`contract.as_metrics`): floats under non-empty string names, ints
        and bools converted; any other entry is refused before a tracker sees it, with one warning per name
        and run."""
        numbers, refused = as_metrics({name: self.redact(value) for name, value in metrics.items()})
        if not self.refused.issuperset(refused):
            self.refused.update(refused)
            warn(
                self.redact.text(f"run {self.experiment_name!r}: metrics at step {step} left out: {', '.join(refused)}")
            )
        self._call("log_metrics", metrics=numbers, step=int(step))

    def log_summary(self, summary: dict[str, Any]) -> None:
        summary = self.redact(summary)
        self.summary.update(summary)
        self.summary_logged = True
        self._call("log_summary", summary=summary)

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> None:
        """Attach the file at `path` to the run as `name` (default: its file name), in the trackers that keep files."""
        name = os.path.basename(path) if name is None else name
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"artifact name {name!r} must be a file name without directories")
        self._call("log_artifact", path=os.fspath(path), name=name)

    def finalize(self, status: Status = "finished") -> None:
        """Call `finalize` once on every tracker built, also those disabled by a failure in another hook, with
        the run's status and end time ("failed" for a disabled tracker of a run otherwise "finished": its
        record misses what came after its failure); each call is isolated, and one that raises is listed in
        `failures` like any other hook's. Only the first call ends the run; later ones do nothing."""
        if self.status != "running":
            return
        end_time, self.status = time.time(), status
        with Deferral.around_trackers():
            for name, hooks in self.trackers.items():
                if "finalize" not in hooks:
                    continue
                # a tracker disabled by a failure holds an incomplete record: it is never "finished"
                complete = name in self.active or status != "finished"
                try:
                    hooks["finalize"]({"status": status if complete else "failed", "end_time": end_time})
                except Exception as err:
                    self._fail(name, "finalize", err, hooks["finalize"].method)
            self.trackers, self.active = {}, []

    # ---- the two NTN.fit callbacks ----------------------------------------------------------

    def callback_init(self, scores: dict[str, float], info: dict[str, Any]) -> None:
        """NTN's callback_init: the initial scores at step -1."""
        self.log_metrics(dict(scores), step=-1)

    def callback_epoch(self, epoch: int, scores: dict[str, float], info: dict[str, Any]) -> None:
        """NTN's callback_epoch: the epoch's scores with reg_loss, jitter and weight_norm_sq, at step = epoch."""
        extra = {k: info[k] for k in ("reg_loss", "jitter", "weight_norm_sq") if k in info}
        self.log_metrics(dict(scores) | extra, step=epoch)


def _raised_at(err: BaseException, code: Any) -> str:
    """`file:line in function` where `err` was raised, for the author of `code`: the innermost frame in its own
    package (a library it called raises deeper), else the innermost; "" without a traceback."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    package = (getattr(code, "__module__", None) or "").split(".")[0]
    home = getattr(sys.modules.get(package), "__file__", None)
    if home is not None and os.path.basename(home) == "__init__.py":
        home = os.path.dirname(home) + os.sep  # a package: every module in it
    own = [f for f in frames if os.path.abspath(f.filename).startswith(home)] if home is not None else []
    raised = (own or frames)[-1]
    return f"{raised.filename}:{raised.lineno} in {raised.name}"


@contextmanager
def start_run(
    experiment_name: str,
    config: dict[str, Any] | None = None,
    backend: str | Sequence[str] | Sequence[Backend] | None = None,
    provenance: Provenance | None = None,
) -> Iterator[TrackedRun]:
    """Track one run with the selected backends (argument, else TRACKER_BACKEND, else "file").

    :param backend: backend names, or the Backends that `validate` returned (many runs of one
        experiment then look up and import the plugins once)
    :param provenance: what made the run (`ntn.tracking.provenance`); default: this process's, gathered once

    Each tracker gets at most one `log_summary` from the core: none when the body logged the summary, else,
    when the body raised, {"success": false, "error": "<Type>: <message>"} (then the exception propagates).
    The run's status reaches the trackers through `finalize(status, end_time)` only: "interrupted" (a
    KeyboardInterrupt, `Interrupted` included), "failed" (the body raised, or the summary says success:
    false) or "finished"; or the body's own `run.finalize("pruned")` (a search stopped it early).
    """
    run = TrackedRun(experiment_name, dict(config or {}), _resolve(backend))
    status = "failed"  # until the body has ended one way or another
    try:
        run.log_provenance(provenance or gather())
        yield run
    except KeyboardInterrupt as err:
        status = "interrupted"
        if not run.summary_logged:
            run.log_summary({"success": False, "error": f"interrupted by {getattr(err, 'signal_name', 'SIGINT')}"})
        raise
    except BaseException as err:
        if not run.summary_logged:
            run.log_summary({"success": False, "error": f"{type(err).__name__}: {err}"})
        raise
    else:
        status = "failed" if run.summary.get("success") is False else "finished"
    finally:
        run.finalize(status)


def _resolve(backend: str | Sequence[str] | Sequence[Backend] | None) -> list[Backend]:
    """The Backends given, else those selected by name."""
    if backend is None or isinstance(backend, str) or not all(isinstance(b, Backend) for b in backend):
        return select(backend)
    return list(backend)


def validate(
    backend: str | Sequence[str] | Sequence[Backend] | None = None, run_names: Sequence[str] = ()
) -> list[Backend]:
    """Select the backends (or take those given) and check each against the contract, before any
    training: a tracker class's hooks, and a factory's optional methods (`contract.Factory`); a factory's
    `check_environment(run_names)` is called, to refuse its configuration, or the runs about to be
    recorded, now. (A factory that is no class has its trackers' hooks checked when a run builds one.)

    :param run_names: the runs that will be started (e.g. one per seed), for `check_environment`
    :raises TrackerValidationError: a tracker or factory that does not keep the contract
    :raises TrackerConfigError: from a factory's `check_environment`, secrets redacted; a run name that
        holds a secret (names are refused, never altered); a bad $NTN_TRACKER_EXIT_TIMEOUT
    """
    backends, redact = _resolve(backend), Redactor()
    if any(redact.holds_secret(name) for name in run_names):
        raise TrackerConfigError(SECRET_NAME)
    budget.exit_timeout()
    for b in backends:
        if isinstance(b.factory, type):  # the methods' signatures, read off the class itself
            hooks_of(b.factory, b.name)
        check_factory(b.factory, b.name)
        check = optional(b.factory, "check_environment")
        if check is not None:
            try:
                check(list(run_names))
            except TrackerConfigError as err:
                raise TrackerConfigError(redact.text(str(err))) from None
    return backends


def prepare(backends: Sequence[Backend]) -> int:
    """Before training, once per process: each factory with a `prepare()` (class)method starts what takes
    long (the aim plugin its uploader, whose import of aim then overlaps the process's own start-up). A
    failure there is no error: the runs are recorded as usual.

    :return: how many backends prepared work of their own, which runs beside training (a core each)
    """
    prepared = 0
    for b in backends:
        start = optional(b.factory, "prepare")
        if start is not None:
            budget.used(b.name, b.factory)
            with contextlib.suppress(Exception):
                start()
                prepared += 1
    return prepared


@contextlib.contextmanager
def hold(backends: Sequence[Backend], run_names: Sequence[str]) -> Iterator[None]:
    """Hold the runs about to be recorded, for as long as the block lasts, in every backend that keeps
    them where another process could write them too: a factory with a `hold_runs(run_names)` (class)method
    (a context manager) locks them there (the file backend: the experiments in TRACKER_DIR).

    :raises TrackerConfigError: another process holds one of them (the message names it), secrets redacted
    """
    redact = Redactor()
    with contextlib.ExitStack() as held:
        for b in backends:
            hold_runs = optional(b.factory, "hold_runs")
            if hold_runs is not None:
                try:
                    held.enter_context(hold_runs(list(run_names)))
                except TrackerConfigError as err:
                    raise TrackerConfigError(redact.text(str(err))) from None
        yield
