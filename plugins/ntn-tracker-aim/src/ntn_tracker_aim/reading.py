"""Reading runs back from an Aim repository directory with Aim's own SDK.

Aim 3.29 serves finished runs to `Repo`/`Run(read_only=True)` through an index that only `aim up`
and `aim storage reindex` maintain; `index_runs` brings it up to date for the runs on disk.
"""

from __future__ import annotations

from pathlib import Path


def index_runs(root: str | Path) -> list[str]:
    """Index every run stored under `root` (the directory holding `.aim`); returns their hashes."""
    from aim import Repo
    from aim.sdk.index_manager import RepoIndexManager

    repo = Repo(str(root))
    manager = RepoIndexManager.get_index_manager(repo)
    hashes = sorted(p.name for p in (Path(repo.path) / "meta" / "chunks").iterdir() if p.is_dir())
    for run_hash in hashes:
        manager.index(run_hash)
    return hashes


def series(run) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Every metric of an aim Run as (name, context phase or "") → [(step, value), ...] in step order."""
    out = {}
    for metric in run.metrics():
        steps, (values, _epochs, _timestamps) = metric.data.items_list()
        out[(metric.name, metric.context.to_dict().get("phase", ""))] = sorted(zip(steps, values))
    return out
