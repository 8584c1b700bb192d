"""Authentication headers for a remote `aim server` behind a proxy (e.g. Cloudflare Access), from the
environment (they are never written anywhere); `aim_internals.send_headers` makes aim send them."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from ntn.tracking import TrackerConfigError


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
    where = f"header {name!r} of {source}" if source == "AIM_CUSTOM_HEADERS" else source
    if _FORBIDDEN_IN_VALUE.search(value):
        raise TrackerConfigError(f"{where} holds a control character (CR, LF, NUL, ...), which HTTP forbids")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise TrackerConfigError(
            f"{where} holds a character HTTP headers cannot carry (only Latin-1: no €, no emoji)"
        ) from None
