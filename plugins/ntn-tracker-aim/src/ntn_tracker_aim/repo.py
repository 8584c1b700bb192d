"""Which Aim repository a run goes to: AIM_REPO, a local path (default `.aim`) or `aim://host:port`."""

from __future__ import annotations

import http.client
import os
import re
from pathlib import Path

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
    allowed = "a local directory or aim://host:port"
    if setting.startswith(REMOTE_PREFIX):
        address = setting[len(REMOTE_PREFIX) :].rstrip("/")
        host, _, port = address.rpartition(":")
        if not host or "/" in address or not port.isdigit() or not 0 < int(port) < 65536:
            raise TrackerConfigError(f"AIM_REPO={setting!r} is not aim://host:port with a port in 1-65535")
        return setting.rstrip("/")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", setting):
        raise TrackerConfigError(f"AIM_REPO={setting!r}: only aim:// servers are supported; use {allowed}")
    path = Path(setting).expanduser().absolute()  # absolute: the uploader may work from another directory
    root = path.parent if path.name == ".aim" else path
    for part in (root, root / ".aim"):
        if part.exists() and not part.is_dir():
            raise TrackerConfigError(f"AIM_REPO={setting!r}: {str(part)!r} is a file, not a directory; use {allowed}")
    return str(root)


def probe_server(remote: str, headers: dict[str, str], timeout: float = PROBE_TIMEOUT_S) -> None:
    """One quick request to the server, with our headers; only the status line is read.

    :raises TrackerConfigError: the server (or a proxy in front of it) refused the credentials
    :raises ConnectionError: the server cannot be reached
    """
    address = remote[len(REMOTE_PREFIX) :]
    last_error: Exception | None = None
    for connection_class in (http.client.HTTPConnection, http.client.HTTPSConnection):
        connection = connection_class(address, timeout=timeout)
        try:
            connection.request("GET", "/status/", headers=headers)
            status = connection.getresponse().status
        except http.client.HTTPException as err:  # something answered, not in plain HTTP: try HTTPS
            last_error = err
            continue
        except OSError as err:  # refused or silent: HTTPS on the same port would be too
            last_error = err
            break
        finally:
            connection.close()
        if status in (401, 403):
            raise TrackerConfigError(
                f"Aim server at {remote} refused the credentials (HTTP {status}); "
                "check CF_ACCESS_CLIENT_ID/CF_ACCESS_CLIENT_SECRET, AIM_AUTH_TOKEN or AIM_CUSTOM_HEADERS"
            )
        if 200 <= status < 300:
            return
        last_error = ConnectionError(f"HTTP {status} on /status/: not an Aim server")
        break  # it speaks this protocol: the other one would not answer better
    raise ConnectionError(f"Aim server at {remote} is unreachable ({type(last_error).__name__}: {last_error})")
