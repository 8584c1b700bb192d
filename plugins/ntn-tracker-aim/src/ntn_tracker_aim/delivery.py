"""Replaying journals into an Aim repository. Runs keep the hash the journal was named after and a
metric written twice at the same (name, step, context) keeps one value, so replaying any part of a
journal again changes nothing: delivery and `sync` are idempotent."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aim import Repo, Run
from aim.sdk.objects.artifact import Artifact
from ntn.tracking import figure_name
from ntn.tracking.provenance import DIFF_FILE, PACKAGES_FILE

from ntn_tracker_aim import aim_internals, auth, journal
from ntn_tracker_aim.reading import HIDDEN, INITIAL, KEPT
from ntn_tracker_aim.repo import REMOTE_PREFIX

DATA_SETTINGS = ("dataset", "n_samples", "data_seed", "preprocessing")  # config values a researcher filters on
STORE = ".by-sha256"  # beside the runs' folders (Aim names those by run hash) at the artifacts URI
STORED_ONCE = frozenset({DIFF_FILE, PACKAGES_FILE})  # attached by every run of a process, alike
RUN_OPTIONS = dict(log_system_params=False, capture_terminal_logs=False, system_tracking_interval=None)


def open_repository(repo: str):
    """The aim Repo at `repo`; a local one that is not complete yet (aim writes VERSION last) is made. Only
    then with init=True: opening with it takes the write lock of the shared index, which makes parallel
    writers fail (cf. aimhubio/aim#2869)."""
    if repo.startswith(REMOTE_PREFIX):
        aim_internals.send_headers(auth.headers_from_env())
        return Repo.from_path(repo)
    return Repo.from_path(repo, init=not (Path(repo) / ".aim" / "VERSION").is_file())


def open_run(repo: str, run_hash: str, experiment: str, started: float | None = None):
    """The aim Run with this hash: resumed if the repository has it, else created with it, dated `started`
    (the Unix time training began: a run delivered later still shows when it trained)."""
    if open_repository(repo).run_exists(run_hash):
        run = Run(run_hash=run_hash, repo=repo, force_resume=True, **RUN_OPTIONS)
        run.experiment = experiment  # again: a writer ended mid-creation may have left the run without it
        return run
    return aim_internals.new_run(repo, run_hash, started, experiment=experiment, **RUN_OPTIONS)


class RunState:
    """What a run has received so far, to write summary and non-numeric metrics as whole params."""

    def __init__(self) -> None:
        self.summary: dict[str, Any] = {}
        self.nonnumeric: dict[str, dict[str, Any]] = {}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def artifacts_uri(repo: str) -> str | None:
    """Where Aim stores the files attached to runs of `repo`: $AIM_ARTIFACTS_URI, else beside a local
    repository; None for a remote one without it (an `aim server` stores no files)."""
    if os.environ.get("AIM_ARTIFACTS_URI"):
        return os.environ["AIM_ARTIFACTS_URI"]
    return None if repo.startswith(REMOTE_PREFIX) else (Path(repo).resolve() / "aim-artifacts").as_uri()


def _hide(run, key: str, value: Any) -> None:
    """`value` as run[HIDDEN][key]: read back, shown on the run's page, never a column of Aim's tables."""
    run[(HIDDEN, key)] = value


def apply(run, state: RunState, record: dict[str, Any], artifacts: str | None = None) -> None:
    """One journal record into the Aim run. Its params are what a researcher filters on: `hparams`, `data`
    (the data settings), `sweep`, `status` and `summary`; the whole config, the provenance, the initial
    evaluation and non-numeric metrics are kept under HIDDEN, out of Aim's tables (which would otherwise
    list over a hundred columns, led by `config.aim_repo`)."""
    op = record["op"]
    if op == "open":  # a run's first attempt, or a new one that replaces what the earlier recorded
        state.__init__()
        run.name = record["name"]
        config = record["config"]
        _hide(run, "config", config)
        run["data"] = {k: config[k] for k in DATA_SETTINGS if k in config}
        run["status"] = "running"
        if config.get("sweep"):  # top-level params the Runs explorer groups a sweep's runs by
            run["sweep"] = {
                "name": config["sweep"],
                "configuration": config.get("experiment"),
                **config.get("swept", {}),
            }
    elif op == "hparams":
        run[op] = record[op]
    elif op == "provenance":
        _hide(run, op, record[op])
    elif op == "metrics" and record["step"] < 0:  # the untrained model: off the charts and tables
        _hide(run, INITIAL, record["metrics"])
    elif op == "metrics":
        numbers = {
            k: float(v) for k, v in record["metrics"].items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        others = {k: v for k, v in record["metrics"].items() if k not in numbers}
        if numbers:
            run.track(numbers, step=int(record["step"]), context={})  # one call: one message to a remote server
        if others:
            state.nonnumeric[str(record["step"])] = others
            _hide(run, "nonnumeric_metrics", state.nonnumeric)
    elif op == "summary":
        state.summary.update(record["summary"])
        run["summary"] = state.summary
        figures = {
            KEPT + figure_name(k, state.summary): float(v)
            for k, v in state.summary.items()
            if _number(v) and k not in ("seed", "best_epoch")
        }
        epoch = state.summary.get("best_epoch")
        if figures:  # as metrics too, at the epoch the run kept: columns of the explorers, comparable in charts
            run.track(figures, step=epoch if isinstance(epoch, int) and epoch >= 0 else 0, context={})
    elif op == "finalize":  # the run's status comes from here only
        status = run["status"] = state.summary["status"] = record.get("status", "finished")
        run["summary"] = state.summary
        if status != "finished" and status not in run.tags:  # Aim's own "Finished" badge says nothing of it
            run.add_tag(status)
            run.description = f"{status}: {state.summary.get('error') or 'no error recorded'}"
    elif op == "artifact" and artifacts is not None and record["name"] in STORED_ONCE:
        run.meta_run_tree.subtree("artifacts")[record["name"]] = _stored_once(record["path"], artifacts)
    elif op == "artifact" and artifacts is not None:
        if run.artifacts_uri is None:
            run.set_artifacts_uri(artifacts)
        run.log_artifact(record["path"], name=record["name"], block=True)


def _stored_once(path: str, artifacts: str) -> Artifact:
    """The file at `path` as <artifacts>/.by-sha256/<its SHA-256>, uploaded unless a local store holds it
    already: the runs of one checkout refer to one copy of its diff (`run.artifacts["git.diff"].uri`)."""
    with open(path, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    stored = Artifact(path, uri=f"{artifacts.rstrip('/')}/{STORE}", name=digest)
    where = urlparse(stored.uri)
    if where.scheme != "file" or not Path(where.path).is_file():
        stored.upload(block=True)
    return stored


class Delivery:
    """One journal's run, open in the repository, fed the journal's new records."""

    def __init__(self, path: Path, repo: str | None = None) -> None:
        self.path = path
        records = journal.read_records(path)
        header = records[0]
        self.repo = repo or header["repo"]
        self.run = open_run(self.repo, path.stem, header["experiment"], header.get("time"))
        self.state = RunState()
        apply(self.run, self.state, header)  # name and config, again on a resumed run
        for record in records[: journal.delivered(path)]:  # rebuild summary state without sending
            if record["op"] == "open":
                self.state = RunState()
            elif record["op"] == "summary":
                self.state.summary.update(record["summary"])

    def step(self) -> bool:
        """Deliver what is new; True when the journal is finished and fully delivered (run closed)."""
        records = journal.read_records(self.path)
        done = journal.delivered(self.path)
        for record in records[done:]:
            apply(self.run, self.state, record, artifacts_uri(self.repo))
        if len(records) > done:
            aim_internals.wait_until_stored(self.run)
            journal.set_delivered(self.path, len(records))
        if journal.is_finalized(records):
            self.close(records[-1].get("time"))
            return True
        return False

    def close(self, ended: float | None) -> None:
        """Close the run with its end time `ended` (the Unix time it ended in training), not now."""
        aim_internals.close_run(self.run, ended)
