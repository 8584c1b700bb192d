"""Authentication headers for a remote `aim server` behind a proxy (e.g. Cloudflare Access).

Aim 3.29's client keeps `request_headers = {}` and its WebSocket reconnect (`refresh_ws`) sends no
headers at all. `install` closes both gaps for every aim Client in this process: `request_headers`
becomes a property that always includes the configured headers, and `refresh_ws` reconnects through
the `ws` property, which passes them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from ntn.tracking import TrackerConfigError

_CONFIGURED: dict[str, str] = {}


def headers_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers asked for by CF_ACCESS_CLIENT_ID/SECRET, AIM_AUTH_TOKEN and AIM_CUSTOM_HEADERS.

    :raises TrackerConfigError: malformed AIM_CUSTOM_HEADERS, or only one of the two CF variables
    """
    environ = os.environ if environ is None else environ
    headers: dict[str, str] = {}
    cf_id, cf_secret = environ.get("CF_ACCESS_CLIENT_ID", ""), environ.get("CF_ACCESS_CLIENT_SECRET", "")
    if bool(cf_id) != bool(cf_secret):
        missing = "CF_ACCESS_CLIENT_SECRET" if cf_id else "CF_ACCESS_CLIENT_ID"
        raise TrackerConfigError(f"{missing} is not set: CF_ACCESS_CLIENT_ID and CF_ACCESS_CLIENT_SECRET go together")
    if cf_id:
        headers |= {"CF-Access-Client-Id": cf_id, "CF-Access-Client-Secret": cf_secret}
    if environ.get("AIM_AUTH_TOKEN"):
        headers["Authorization"] = f"Bearer {environ['AIM_AUTH_TOKEN']}"
    raw = environ.get("AIM_CUSTOM_HEADERS", "")
    if raw.strip():
        try:
            custom: Any = json.loads(raw)
        except ValueError as err:
            raise TrackerConfigError(
                f"AIM_CUSTOM_HEADERS is not valid JSON ({err.msg} at position {err.pos})"
            ) from None
        if not isinstance(custom, dict) or not all(isinstance(v, str | int | float) for v in custom.values()):
            raise TrackerConfigError(
                'AIM_CUSTOM_HEADERS must be a JSON object of header names to values, e.g. {"X-Key": "..."}'
            )
        headers |= {str(k): str(v) for k, v in custom.items()}
    for name, value in headers.items():
        _check_header(name, value, environ)
    return headers


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # the characters HTTP allows in a header name
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but tab: CR, LF, NUL, ...


def _check_header(name: str, value: str, environ: Mapping[str, str]) -> None:
    """Refuse what HTTP forbids, naming the variable it came from and never the value.

    :raises TrackerConfigError: a header name with characters outside HTTP's token, or a value with CR,
        LF, NUL or another control character
    """
    source = {
        "CF-Access-Client-Id": "CF_ACCESS_CLIENT_ID",
        "CF-Access-Client-Secret": "CF_ACCESS_CLIENT_SECRET",
        "Authorization": "AIM_AUTH_TOKEN" if environ.get("AIM_AUTH_TOKEN") else "AIM_CUSTOM_HEADERS",
    }.get(name, "AIM_CUSTOM_HEADERS")
    if not _TOKEN.fullmatch(name):
        raise TrackerConfigError(f"{source}: header name {name!r} has characters HTTP does not allow in a name")
    if _FORBIDDEN_IN_VALUE.search(value):
        where = f"header {name!r} of {source}" if source == "AIM_CUSTOM_HEADERS" else source
        raise TrackerConfigError(f"{where} holds a control character (CR, LF, NUL, ...), which HTTP forbids")


class _RequestHeaders:
    """Data descriptor for aim's Client.request_headers: the client's own headers plus ours."""

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        if client is None:
            return self
        return {**client.__dict__.get("_ntn_own_headers", {}), **_CONFIGURED}

    def __set__(self, client: Any, value: dict[str, str]) -> None:
        client.__dict__["_ntn_own_headers"] = dict(value)


def _refresh_ws(client: Any) -> None:
    """aim's refresh_ws, but through the `ws` property, which sends request_headers."""
    client._ws = None
    client.ws  # noqa: B018 - the property connects


def install(headers: Mapping[str, str]) -> None:
    """Send `headers` on every HTTP request and WebSocket connection of aim's remote client."""
    from aim.ext.transport.client import Client

    _CONFIGURED.clear()
    _CONFIGURED.update(headers)
    if not isinstance(Client.__dict__.get("request_headers"), _RequestHeaders):
        Client.request_headers = _RequestHeaders()
        Client.refresh_ws = _refresh_ws
