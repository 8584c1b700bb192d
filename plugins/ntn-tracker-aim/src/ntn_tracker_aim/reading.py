"""Reading runs back from an Aim repository directory with Aim's own SDK.

Aim 3.29 serves finished runs to `Repo`/`Run(read_only=True)` through an index that only `aim up`
and `aim storage reindex` maintain; `index_runs` brings it up to date for the runs on disk.
"""

from __future__ import annotations

from pathlib import Path

INITIAL = "initial"  # the param holding the initial evaluation (step -1) of the untrained model
# where a run keeps what no one filters on (config, provenance, initial evaluation): the one param Aim's tables
# leave out (its web API's `skip_system`); its run page shows it. Runs delivered before kept them at the top.
HIDDEN = "__system_params"
KEPT = "kept/"  # the summary's figures tracked as metrics at the epoch the run kept
INIT_CONTEXT = {"phase": "init"}  # where runs delivered before 2026-12-03 hold it: metrics at step 0


def index_runs(root: str | Path) -> list[str]:
    """Index every run stored under `root` (the directory holding `.aim`); returns their hashes."""
    from aim import Repo

    from ntn_tracker_aim import aim_internals

    repo = Repo(str(root))
    hashes = sorted(p.name for p in (Path(repo.path) / "meta" / "chunks").iterdir() if p.is_dir())
    aim_internals.index(repo, hashes)
    return hashes


def series(run) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Every metric of an aim Run as (name, context phase or "") → [(step, value), ...] in step order."""
    out = {}
    for metric in run.metrics():
        steps, (values, _epochs, _timestamps) = metric.data.items_list()
        out[(metric.name, metric.context.to_dict().get("phase", ""))] = sorted(zip(steps, values))
    return out


def _summary(summary: dict, active: bool) -> dict:
    """The recorded summary, with the status a reader should show: "running" while Aim holds the run
    open, else the recorded one ("finished", "failed", "interrupted"); runs of older versions, which
    recorded none, are "finished"."""
    return summary | {"status": "running" if active else summary.get("status", "finished")}


def to_record(run) -> dict:
    """An aim Run in the shape of a run file: metrics per step, the initial evaluation back at step -1."""

    def param(key: str) -> dict:
        for where in ((HIDDEN, key), key):  # runs delivered before HIDDEN: at the top
            try:
                return run[where]
            except KeyError:
                continue
        return {}

    log: dict[int, dict] = {}
    summary = param("summary")
    for metric in run.metrics():
        context = metric.context.to_dict()
        if metric.name.startswith(KEPT) or (metric.name.startswith("test_") and metric.name in summary):
            continue  # the summary's figures (before kept/: its held-out ones, by their own names)
        steps, (values, _epochs, _timestamps) = metric.data.items_list()
        for step, value in zip(steps, values):
            step = -1 if context == INIT_CONTEXT else step
            log.setdefault(step, {"step": step})[metric.name] = float(value)

    if initial := param(INITIAL):  # one read: on a server, each is a round trip
        log[-1] = {"step": -1, **initial}

    provenance = param("provenance")
    return {
        "experiment_name": run.name,
        "config": param("config"),
        **({"provenance": provenance} if provenance else {}),
        "hparams": param("hparams"),
        "metrics_log": [log[s] for s in sorted(log)],
        "summary": _summary(summary, run.active),
        "started": run.creation_time,  # when training started (tracker.py dates the run so)
        "aim": {"hash": run.hash, "experiment": run.experiment},
    }


UNINDEXED = (
    "aim 3.29 indexes a server's runs only while `aim up` runs on its repository, or after `aim storage reindex` there"
)


NOT_NTN = "a run of another program, or one whose delivery was cut short: ntn-trackers sync delivers the rest"


def read_runs(source: str) -> tuple[list[dict], list[str]]:
    """The `aim` reader for `ntn-trackers summary/compare`: every run of a repository; for a server, the runs
    it holds but has not indexed yet are counted in a problem line, never silently left out.

    :raises ValueError: one line, when a server cannot be reached (or refuses the credentials)
    """
    from aim import Repo, Run
    from ntn.tracking import TrackerConfigError

    from ntn_tracker_aim import auth
    from ntn_tracker_aim.repo import REMOTE_PREFIX, aim_repo_argument, probe_server

    try:
        root = aim_repo_argument(source or None)  # "": AIM_REPO, else .aim, as the tracker
        if root.startswith(REMOTE_PREFIX):
            probe_server(root, auth.headers_from_env())
    except (ConnectionError, TrackerConfigError) as err:
        raise ValueError(str(err)) from None
    problems = []
    if root.startswith(REMOTE_PREFIX):
        from ntn_tracker_aim import aim_internals

        repo = Repo.from_path(root)
        runs = list(repo.iter_runs())
        unseen = aim_internals.run_hashes(repo) - {run.hash for run in runs}
        if unseen:
            unread = f"{len(unseen)} runs on the server are not indexed yet and cannot be read"
            problems.append(f"{source}: {unread} ({UNINDEXED})")
    else:
        if not (Path(root) / ".aim").is_dir():
            return [], [f"{source}: no Aim repository there"]
        runs = [Run(h, repo=root, read_only=True) for h in index_runs(root)]
    records = []
    for run in runs:
        if run.name == f"Run: {run.hash}":  # Aim's own name: ntn names a run with its first record
            problems.append(f"{source} run {run.hash}: no ntn record in it ({NOT_NTN})")
            continue
        try:
            records.append(to_record(run))
        except Exception as err:  # a damaged run must not hide the others
            problems.append(f"{source} run {run.hash}: {type(err).__name__}: {err}")
    return records, problems
