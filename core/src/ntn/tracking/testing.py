"""Conformance kit for tracker plugins: run it in your plugin's own test suite.

    from ntn.tracking.testing import run_conformance

    def test_my_tracker_conforms(tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        run = run_conformance(MyTracker)
        # then read back what MyTracker wrote and compare it with what the kit sent: run.config,
        # run.provenance, run.hparams, run.metrics, run.summary, run.artifact (name, content), END_TIME

It drives three runs in one process, as side-by-side seeds arrive (docs/writing-a-tracker-plugin.md,
"Where and when hooks run"):
- the first and the second, built the way the core builds trackers and called directly on one thread
  with their hooks interleaved (first, second, first, second, ...), the second ending before the first:
  realistic payloads (provenance, nested config, NaN and ±Inf metrics, unicode names, step -1, one
  summary with no status in it, a file attached and removed once the hook returned); the first ends
  with finalize(status="failed", end_time=END_TIME), the second "finished" at END_TIME + 1, with
  metrics and a summary of its own, so that one run's records in the other's are found;
- a third, through the core, whose log_metrics fails (as a server that went away would make it): the
  core disables it, and its finalize must still succeed and record the run as failed.
Any exception from a hook, or a hook whose arguments do not match the hookspecs, fails the check.
`check_reader` reads the three back through the plugin's reader, comparing numbers to a relative
tolerance of REL_TOL (float32 storage passes). `run_in_dirty_repository` and `check_provenance` check
what a backend keeps of a run's provenance (`commit_all` and `git` make and read the git repositories
they need).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ntn.tracking.contract import HOOKS, Hook, TrackerWarning, hooks_of

EXPERIMENT_NAME = "conformance_ünïcødé λ/run 1_seed0"
CONFIG = {
    "model": "MPO2",
    "L": 3,
    "bond_dim": 6,
    "jitter": {"start": 0.05, "decay": 0.9, "min": 1e-6, "schedule": [0.05, 0.045]},
    "seeds": (0, 1, 2),
    "dataset": {"name": "california_housing", "features": ["MedInc", "AveOccup"], "n": 500},
    "notes": "température ≥ 0 ✓",
    "missing": None,
    "flag": True,
}
PROVENANCE = {
    "code": {"directory": "/home/ana/ntn", "git_commit": "0" * 40, "git_branch": "main", "git_dirty": True},
    "command": {"argv": ["python", "-m", "experiments.train", "mpo2"], "cwd": "/home/ana/ntn"},
    "versions": {"python": "3.11.9", "ntn": "0.1.0", "torch": "2.13.0", "numpy": "2.2.0"},
    "machine": {"host": "node-ü1", "cores": 2, "device": "cpu"},
    "data": {"name": "california_housing", "sha256": "ab" * 32, "data_seed": 42},
}
HPARAMS = {"bond_dim": 6, "jitter_start": 0.05, "batch_size": 100, "τ": 0.5, "nested": {"depth": {"level": 2}}}
METRICS = [
    (-1, {"loss": 6.64, "r2": -3.88}),
    (0, {"loss": 0.27, "r2": 0.80, "reg_loss": 0.86, "jitter": 0.05, "weight_norm_sq": 11.8}),
    (1, {"loss": math.nan, "r2": -math.inf, "reg_loss": math.inf, "jitter": 0.045, "μ-metric": 1.0}),
    (2, {"loss": 0.26, "r2": 0.81, "reg_loss": 0.80, "jitter": 0.0405, "weight_norm_sq": 12.1, "tokens_per_s": 1.5}),
]  # tokens_per_s: a number under a secret-looking name stays a number
SECOND_METRICS = [(step, {name: value + 10.0 for name, value in m.items()}) for step, m in METRICS]
SUMMARY = {"seed": 0, "loss": 0.26, "r2": 0.81, "success": True}
FAILED_SUMMARY = {"success": False, "error": "NewtonStepError: Newton step on top core at site 1 failed"}
ARTIFACT_NAME, ARTIFACT = "results ✓.json", b'{"test_r2_mean": 0.81}\n'
END_TIME = 1767225600.0  # the first run's end passed to finalize (2026-01-01 00:00 UTC), to read back


@dataclass
class ConformanceRun:
    """What the kit sent to one run, so the plugin's test can compare it with what the tracker recorded;
    the first run's, with the second's as `second` (its tracker, metrics, summary and status its own)."""

    tracker: Any
    experiment_name: str = EXPERIMENT_NAME
    config: dict[str, Any] = field(default_factory=lambda: dict(CONFIG))
    provenance: dict[str, Any] = field(default_factory=lambda: dict(PROVENANCE))
    hparams: dict[str, Any] = field(default_factory=lambda: dict(HPARAMS))
    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=lambda: list(METRICS))
    summary: dict[str, Any] = field(default_factory=lambda: SUMMARY | FAILED_SUMMARY)
    artifact: tuple[str, bytes] = (ARTIFACT_NAME, ARTIFACT)  # name, content; removed once the hook returned
    status: str = "failed"
    end_time: float = END_TIME
    second: ConformanceRun | None = None
    began: float = 0.0  # the Unix time the kit began: every run it makes started after it


def run_conformance(factory: Callable[..., Any], experiment_name: str = EXPERIMENT_NAME) -> ConformanceRun:
    """Build two trackers with `factory(experiment_name=..., config=...)` and drive them through two runs
    with their hooks interleaved, then a third, failing run through the core (see the module).

    :raises AssertionError: naming the run and the hook that failed, or the hook that does not match its spec
    """
    began = time.time()
    sent = ConformanceRun(_built(factory, experiment_name), experiment_name, began=began)
    second_tracker = _built(factory, run_name(experiment_name, 1))
    sent.second = replace(
        sent,
        tracker=second_tracker,
        experiment_name=run_name(experiment_name, 1),
        hparams=HPARAMS | {"seed": 1},
        metrics=list(SECOND_METRICS),
        summary=SUMMARY | {"seed": 1},
        status="finished",
        end_time=END_TIME + 1,
        second=None,
    )
    runs = [sent, sent.second]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hooks = [hooks_of(run.tracker, "under-test") for run in runs]
    near_misses = sorted({str(w.message) for w in caught if issubclass(w.category, TrackerWarning)})
    assert not near_misses, "; ".join(near_misses)  # a misspelt hook is never called: the core only warns
    assert hooks[0], f"{factory!r} implements none of the hooks {tuple(HOOKS)}"
    directory = tempfile.mkdtemp()
    try:
        calls = [_calls(run, directory) for run in runs]
        finalize = [c.pop() for c in calls]
        for step in range(len(calls[0])):  # first, second, first, second, ...
            for run, its_hooks, its_calls in zip(runs, hooks, calls, strict=True):
                _call(run, its_hooks, *its_calls[step], directory)
        for i in (1, 0):  # the second run ends first
            _call(runs[i], hooks[i], *finalize[i], directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    _failing_run(factory, experiment_name)
    return sent


def _calls(run: ConformanceRun, directory: str) -> list[tuple[str, dict[str, Any]]]:
    """One run's hook calls in order, its attached file written under `directory`."""
    artifact = os.path.join(directory, f"{len(os.listdir(directory))}.json")
    with open(artifact, "wb") as f:
        f.write(run.artifact[1])
    calls: list[tuple[str, dict[str, Any]]] = [("log_provenance", {"provenance": dict(run.provenance)})]
    calls += [("log_hparams", {"hparams": dict(run.hparams)})]
    calls += [("log_metrics", {"metrics": dict(m), "step": step}) for step, m in run.metrics]
    calls += [("log_summary", {"summary": dict(run.summary)})]  # one summary; no status in it
    calls += [("log_artifact", {"path": artifact, "name": run.artifact[0]})]
    return [*calls, ("finalize", {"status": run.status, "end_time": run.end_time})]


def _built(factory: Callable[..., Any], experiment_name: str) -> Any:
    try:
        return factory(experiment_name=experiment_name, config=dict(CONFIG))
    except Exception as err:
        raise AssertionError(
            f"run {experiment_name!r}: building the tracker ({factory!r}) raised {type(err).__name__}: {err}"
        ) from err


def _call(run: ConformanceRun, hooks: dict[str, Hook], hook: str, kwargs: dict[str, Any], directory: str) -> None:
    """One hook call; `directory` holds the files the kit attaches, each removed once `log_artifact` returned."""
    try:
        if hook in hooks:
            hooks[hook](kwargs)
    except Exception as err:
        removed = isinstance(err, OSError) and directory in str(err)  # an attached file, read after its hook
        hint = " (a file given to log_artifact is removed once that hook returns, as the core does: copy it there)"
        raise AssertionError(
            f"run {run.experiment_name!r}: {hook}({kwargs!r}) raised {type(err).__name__}: {err}{hint * removed}"
        ) from err
    if hook == "log_artifact":
        os.remove(kwargs["path"])  # a tracker keeps its own copy


def run_name(experiment_name: str, seed: int) -> str:
    """The name of the kit's run of `seed` in the same process (seed 0 is `experiment_name`)."""
    return experiment_name.removesuffix("_seed0") + f"_seed{seed}"


def _failing_run(factory: Callable[..., Any], experiment_name: str) -> None:
    """The third run, whose tracker fails in `log_metrics`, through the core as a user's run goes."""
    from ntn.tracking.discovery import Backend
    from ntn.tracking.run import TrackedRun

    def failing(**kwargs: Any) -> Any:
        tracker = factory(**kwargs)

        def log_metrics(metrics: dict[str, float], step: int) -> None:
            raise ConnectionError("the server went away")

        tracker.log_metrics = log_metrics
        return tracker

    run = TrackedRun(run_name(experiment_name, 2), dict(CONFIG), [Backend("under-test", failing)])
    run.log_hparams(dict(HPARAMS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run.log_metrics({"loss": 1.0}, step=0)
    run.log_summary({"seed": 2, "success": False, "error": "ConnectionError: the server went away"})
    run.finalize("failed")
    hooks = [failure["hook"] for failure in run.failures]
    assert hooks == ["log_metrics"], (
        f"run {run.experiment_name!r}: after a failing log_metrics, expected no other failure; found {run.failures[1:]}"
    )


def check_reader(backend: str, source: str, sent: ConformanceRun) -> dict[str, Any]:
    """Read the kit's three runs back through `backend`'s reader (entry-point group ntn.trackers.readers)
    and compare the first two with what the kit sent: hparams, the provenance (when the tracker records
    it), every metric at its step (NaN and ±Inf included), the summary with its status, when each started
    (`started`, when the reader gives it); the third must be recorded, status "failed". Returns the first
    run's record.

    :raises AssertionError: naming the run and what differs, or how many times a run was recorded
    """
    from ntn.tracking.readers import read_runs

    records, problems = read_runs(backend, source)
    assert problems == [], problems
    names = [sent.experiment_name, run_name(sent.experiment_name, 1), run_name(sent.experiment_name, 2)]
    found = {name: [r for r in records if r["experiment_name"] == name] for name in names}
    for which, name in zip(("first", "second", "third (failing)"), names, strict=True):
        count = len(found[name])
        assert count == 1, f"the kit's {which} run {name!r} was recorded {count} times in {source}, expected once"
    differences = []
    for run in (sent, sent.second):
        assert run is not None
        record = found[run.experiment_name][0]
        differences += _differences(f"run {run.experiment_name!r}: hparams", run.hparams, record.get("hparams", {}))
        if "provenance" in record:
            differences += _differences(
                f"run {run.experiment_name!r}: provenance", run.provenance, record["provenance"]
            )
        by_step = {entry["step"]: entry for entry in record.get("metrics_log", [])}
        for step, metrics in run.metrics:
            where = f"run {run.experiment_name!r}: metrics at step {step}:"
            differences += _differences(where, metrics, by_step.get(step, {}), extra_ok=True)
        where = f"run {run.experiment_name!r}: summary"
        summary = record.get("summary", {})
        differences += _differences(where, run.summary | {"status": run.status}, summary, extra_ok=True)
        other = sent.second if run is sent else sent
        differences += [  # extra keys are allowed, but not the other run's values: records shared between runs
            f"{where} {key!r}: read back {summary[key]!r}, sent only to run {other.experiment_name!r}"
            for key in sorted(summary.keys() & other.summary.keys() - run.summary.keys())
            if _same(other.summary[key], summary[key])
        ]
    read_at = time.time()
    differences += [  # optional; where given, when the run started: `summary` counts the newest run of a name
        f"run {name!r}: started {found[name][0]['started']!r} is no Unix time between the kit's start and now"
        for name in names
        if "started" in found[name][0] and not sent.began - 1 <= found[name][0]["started"] <= read_at + 1
    ]
    assert not differences, "; ".join(differences)
    status = found[names[2]][0]["summary"].get("status")
    assert status == "failed", (
        f"the kit's failing run {names[2]!r} was recorded with status {status!r}, expected 'failed'"
    )
    return found[sent.experiment_name][0]


REL_TOL = 1e-6  # numbers read back may differ by this much, relatively: float32 storage keeps ~7 digits


def _same(sent: Any, got: Any) -> bool:
    if isinstance(sent, bool) or not isinstance(sent, int | float):
        return type(got) is type(sent) and got == sent
    if isinstance(got, bool) or not isinstance(got, int | float):
        return False
    if math.isnan(sent) or math.isinf(sent):
        return math.isnan(got) if math.isnan(sent) else got == sent
    return math.isclose(got, sent, rel_tol=REL_TOL, abs_tol=0.0 if sent else 1e-12)


def _differences(where: str, sent: dict[str, Any], got: dict[str, Any], extra_ok: bool = False) -> list[str]:
    """One line per key whose value read back differs from the one sent: the key, the two values."""
    if not isinstance(got, dict):
        return [f"{where}: sent a dict, read back {got!r}"]
    found = []
    for key, value in sent.items():
        if key not in got:
            found.append(f"{where} {key!r}: sent {value!r}, not read back")
        elif isinstance(value, dict):
            found += _differences(f"{where} {key!r}", value, got[key])
        elif not _same(value, got[key]):
            found.append(f"{where} {key!r}: sent {value!r}, read back {got[key]!r}")
    if not extra_ok:
        found += [f"{where} {key!r}: read back {got[key]!r}, never sent" for key in got.keys() - sent.keys()]
    return found


def check_config_error(backend: str, environ: dict[str, str], names: str) -> str:
    """With the plugin's own settings `environ` (one of them bad), selecting `backend` and starting a run
    must stop before any hook with a TrackerConfigError of one line that names `names`. Returns it.

    :raises AssertionError: no TrackerConfigError, or one that is not a single line naming `names`
    """
    from ntn.tracking import TrackerConfigError, start_run, validate

    saved = {name: os.environ.get(name) for name in environ}
    os.environ.update(environ)
    try:
        validate(backend, ["kit_seed0"])
        with start_run("kit_seed0", {}, backend=backend):
            pass
    except TrackerConfigError as err:
        message = str(err)
    else:
        raise AssertionError(f"{backend!r} accepted {environ!r}: no TrackerConfigError before the run")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert "\n" not in message and names in message, f"not one line naming {names!r}: {message!r}"
    return message


PROVENANCE_RUN = "provenance_kit_seed0"


def git(directory: str | os.PathLike, *arguments: str) -> bytes:
    """The output of `git -C directory ARGUMENTS`.

    :raises subprocess.CalledProcessError: git failed
    """
    return subprocess.run(["git", "-C", str(directory), *arguments], check=True, capture_output=True).stdout


def commit_all(directory: str | os.PathLike) -> str:
    """Make `directory` a git repository with everything in it committed; the commit's hash."""
    git(directory, "init", "-q")
    git(directory, "add", "-A")
    git(directory, "-c", "user.name=kit", "-c", "user.email=kit@example.org", "commit", "-q", "-m", "kit")
    return git(directory, "rev-parse", "HEAD").decode().strip()


def run_in_dirty_repository(backend: str, directory: str | os.PathLike) -> tuple[str, bytes]:
    """Make a git repository at `directory` (one commit, then a tracked file changed and left uncommitted)
    and record one run `PROVENANCE_RUN` with `backend`, its code there. Returns the commit and the diff."""
    from ntn.tracking.provenance import gather
    from ntn.tracking.run import start_run

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "train.py"), "w") as f:
        f.write("JITTER_START = 0.01\n")
    commit = commit_all(directory)
    with open(os.path.join(directory, "train.py"), "w") as f:
        f.write("JITTER_START = 0.1  # not committed\n")
    with start_run(PROVENANCE_RUN, {"model": "MPO2"}, backend=backend, provenance=gather(directory)) as run:
        run.log_summary({"seed": 0, "success": True})
    return commit, git(directory, "diff", "HEAD", "--binary")


def check_provenance(backend: str, source: str, commit: str, diff: bytes) -> dict[str, Any]:
    """Read `PROVENANCE_RUN` back through `backend`'s reader: its provenance must name `commit`, dirty, and
    the SHA-256 of `diff`, with the versions and the machine. Returns the provenance read back.

    :raises AssertionError: naming what differs
    """
    from ntn.tracking.readers import read_runs

    records, problems = read_runs(backend, source)
    found = [r for r in records if r["experiment_name"] == PROVENANCE_RUN]
    assert len(found) == 1, f"{len(found)} runs named {PROVENANCE_RUN!r} in {source} ({problems})"
    provenance = found[0].get("provenance")
    assert isinstance(provenance, dict), f"no provenance read back: {found[0]!r}"
    code = provenance["code"]
    assert code["git_commit"] == commit and code["git_dirty"] is True, code
    assert code["git_diff_sha256"] == hashlib.sha256(diff).hexdigest(), code
    assert provenance["versions"]["python"] and provenance["versions"]["trackers"].get(backend), provenance
    assert provenance["machine"]["cores"] >= 1, provenance
    return provenance
