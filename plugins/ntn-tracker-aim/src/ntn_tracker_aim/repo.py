"""Which Aim repository a run goes to: AIM_REPO, a local path (default `.aim`) or `aim://host:port`."""

from __future__ import annotations

import os
from pathlib import Path

import requests
from ntn.tracking import TrackerConfigError

DEFAULT_REPO = ".aim"
REMOTE_PREFIX = "aim://"
PROBE_TIMEOUT_S = 3.0  # once per process and server; an unreachable server is not asked again


def aim_repo_argument(setting: str | None = None) -> str:
    """What to hand to aim as `repo=`: the remote URL, or the absolute local directory holding `.aim`.

    A local AIM_REPO whose last component is `.aim` (the default) is that repository; any other
    local path is a root directory, and its repository is `<path>/.aim` (as `aim init` makes it).
    """
    setting = (setting if setting is not None else os.environ.get("AIM_REPO", "")).strip() or DEFAULT_REPO
    if setting.startswith(REMOTE_PREFIX):
        if not setting[len(REMOTE_PREFIX) :].strip("/"):
            raise TrackerConfigError(f"AIM_REPO={setting!r} names no server; use aim://host:port")
        return setting.rstrip("/")
    path = Path(setting).expanduser().absolute()  # absolute: the uploader may work from another directory
    return str(path.parent if path.name == ".aim" else path)


def probe_server(remote: str, headers: dict[str, str]) -> None:
    """One quick request to the server, as aim's client would make it, with our headers.

    :raises TrackerConfigError: the server (or a proxy in front of it) refused the credentials
    :raises ConnectionError: the server cannot be reached
    """
    address = remote[len(REMOTE_PREFIX) :]
    last_error: Exception | None = None
    for scheme in ("http", "https"):
        try:
            response = requests.get(f"{scheme}://{address}/status/", headers=headers, timeout=PROBE_TIMEOUT_S)
        except requests.RequestException as err:
            last_error = err
            continue
        if response.status_code in (401, 403):
            raise TrackerConfigError(
                f"Aim server at {remote} refused the credentials (HTTP {response.status_code}); "
                "check CF_ACCESS_CLIENT_ID/CF_ACCESS_CLIENT_SECRET, AIM_AUTH_TOKEN or AIM_CUSTOM_HEADERS"
            )
        if response.ok:
            return
        last_error = ConnectionError(f"HTTP {response.status_code}")
    raise ConnectionError(f"Aim server at {remote} is unreachable ({type(last_error).__name__}: {last_error})")
