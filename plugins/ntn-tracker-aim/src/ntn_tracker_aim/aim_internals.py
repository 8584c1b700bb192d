"""Every contact with aim's internals, for what aim 3.29 offers no public way to do; checked against aim's version.

- `send_headers`: aim's remote client keeps `request_headers = {}` and its WebSocket reconnect
  (`refresh_ws`) sends no headers at all; a proxy in front of the server (Cloudflare Access) needs them.
- `new_run`: a new run with the hash and creation time we choose (`generate_run_hash`, `Repo.request_props`),
  so that replaying a journal is idempotent and a run delivered late still shows when it trained.
- `close_run`: a run's end time set to when it ended in training, not to when it was delivered.
- `wait_until_stored`: the remote client's queue, until the server acknowledged what was sent.
- `run_hashes`: every run a server holds, indexed or not, without aim's cache of that list.
- `clean_up_at_exit`: aim's clean-up at exit, made to end: a finalizer that raises (its server has gone)
  killed aim's clean-up thread before it signalled, and the process waited for it for ever.
- `index`: the repository index that serves finished runs to readers, which only `aim up` and
  `aim storage reindex` maintain.
Each has a test of its own in tests/test_aim_internals.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import aim.sdk.base_run as base_run
from aim import Repo, Run
from aim.ext.cleanup import AutoClean
from aim.ext.transport.client import Client
from aim.sdk.index_manager import RepoIndexManager

SUPPORTED = "3.29."


def check_version(installed: str) -> None:
    """:raises ImportError: for an aim these patches were not written against"""
    if not installed.startswith(SUPPORTED):
        raise ImportError(
            f"ntn-tracker-aim works with aim {SUPPORTED}x, not aim {installed}: pip install 'aim>=3.29,<3.30'"
        )


check_version(version("aim"))

_HEADERS: dict[str, str] = {}


class _RequestHeaders:
    """Data descriptor for Client.request_headers: the client's own headers plus ours."""

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        if client is None:
            return self
        return {**client.__dict__.get("_ntn_own_headers", {}), **_HEADERS}

    def __set__(self, client: Any, value: dict[str, str]) -> None:
        client.__dict__["_ntn_own_headers"] = dict(value)


def _refresh_ws(client: Any) -> None:
    """aim's refresh_ws, but through the `ws` property, which sends request_headers."""
    client._ws = None
    client.ws  # noqa: B018 - the property connects


def send_headers(headers: Mapping[str, str]) -> None:
    """Send `headers` on every HTTP request and WebSocket (re)connection of aim's remote clients in this process."""
    _HEADERS.clear()
    _HEADERS.update(headers)
    if not isinstance(Client.__dict__.get("request_headers"), _RequestHeaders):
        Client.request_headers = _RequestHeaders()
        Client.refresh_ws = _refresh_ws


def new_run(repo: str, run_hash: str, created: float | None, **options: Any) -> Run:
    """A new aim Run of `repo` with hash `run_hash`, created at the Unix time `created` (None: now)."""
    generate, request_props = base_run.generate_run_hash, Repo.request_props

    def dated_props(self: Repo, hash_: str, read_only: bool, created_at: datetime | None = None) -> Any:
        if created_at is None and created is not None and hash_ == run_hash:
            created_at = datetime.fromtimestamp(created, tz=UTC)  # the server takes an aware time
            created_at = created_at if self.is_remote_repo else created_at.replace(tzinfo=None)  # sqlite: naive UTC
        return request_props(self, hash_, read_only, created_at)

    base_run.generate_run_hash = lambda: run_hash
    Repo.request_props = dated_props
    try:
        return Run(repo=repo, **options)
    finally:
        base_run.generate_run_hash, Repo.request_props = generate, request_props


def close_run(run: Run, ended: float | None) -> None:
    """Close `run` with its end time `ended` (a Unix time; None: now)."""
    if ended is not None:
        resources = run._resources  # aim sets end_time to now in close(), through this object
        resources.set_run_end_time = lambda: resources.meta_run_tree.__setitem__("end_time", ended)
    run.close()
    wait_until_stored(run)  # a remote server has what close() sent: a removed journal is a closed run


def wait_until_stored(run: Run) -> None:
    """For a remote repository, until the server has acknowledged everything sent so far (this also keeps
    aim's in-memory queue to one batch; aim's own bound, __AIM_CLIENT_QUEUE_MAX_MEMORY__, breaks it)."""
    client = getattr(run.repo, "_client", None)
    if client is not None:
        client.get_queue().wait_for_finish()


def index(repo: Repo, run_hashes: list[str]) -> None:
    """Bring the index that serves finished runs to `Repo`/`Run(read_only=True)` up to date for `run_hashes`."""
    manager = RepoIndexManager.get_index_manager(repo)
    for run_hash in run_hashes:
        manager.index(run_hash)


def run_hashes(repo: Repo) -> set[str]:
    """Every run a remote `repo`'s server holds, indexed or not, open or closed. (`Repo.list_all_runs`
    caches its answer with the Repo in the key: the Repo then lives until exit, where aim's clean-up
    contacts the server, and hangs the process when the server has gone.)"""
    proxy = repo._remote_repo_proxy
    return set(proxy.list_all_runs()) | set(proxy.list_active_runs())


def clean_up_at_exit() -> None:
    """aim's `AutoClean._cleanup` (each resource's finalizer, highest priority first), but a finalizer that
    raises no longer stops the others or keeps the exit waiting: the done signal is always set."""
    try:
        for _, (_, finalizer) in reversed(sorted(AutoClean._finalizers.items(), key=lambda item: item[1][0])):
            try:
                finalizer()
            except Exception:  # the server has gone: nothing left to release there
                pass
    finally:
        AutoClean.stop_signal.set()


AutoClean._cleanup = staticmethod(clean_up_at_exit)
