"""Removing secrets from payloads before any tracker sees them.

Rules applied recursively to dicts, lists, tuples and sets:
- by name: the value of a key that looks secret (`*secret*`, `*token*`, `*password*`, `*_key`,
  `authorization`, `*headers*`) is replaced whole, unless it is a number or a boolean (a metric such as
  `tokens_per_s` stays a number);
- in URLs: the password of `scheme://user:password@host` is replaced;
- by value: any occurrence of a current secret from the environment inside any string is replaced;
  any other value (a path, an array, an object) whose text holds one becomes that text, redacted.
  The secrets are the values of `CF_ACCESS_CLIENT_SECRET`, `CF_ACCESS_CLIENT_ID`, `AIM_AUTH_TOKEN`,
  every value in the JSON object `AIM_CUSTOM_HEADERS` (4 characters or more), and the value of every
  variable whose name marks it as secret (TOKEN, SECRET, PASSWORD, PASSWD, KEY, CREDENTIAL, AUTH,
  COOKIE, PRIVATE; 8 characters or more, so that short flags such as "true" stay readable).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

REDACTED = "[REDACTED]"
SECRET_ENV_VARS = ("CF_ACCESS_CLIENT_SECRET", "CF_ACCESS_CLIENT_ID", "AIM_AUTH_TOKEN")
SECRET_KEY = re.compile(r"secret|token|password|passwd|_key$|^key$|authorization|headers?$|cookie", re.IGNORECASE)
MIN_SECRET_LENGTH = 4
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^@\s/]+@")
SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH|COOKIE|PRIVATE", re.IGNORECASE)
MIN_GENERIC_SECRET_LENGTH = 8
_PLAIN = frozenset({float, int, bool, type(None)})  # values with nothing to redact


@lru_cache(maxsize=4096)  # a run repeats its keys every step
def _secret_key(key: str) -> bool:
    return SECRET_KEY.search(key) is not None


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret strings currently in the environment, longest first."""
    environ = os.environ if environ is None else environ
    values = [environ.get(name, "") for name in SECRET_ENV_VARS]
    try:
        headers = json.loads(environ.get("AIM_CUSTOM_HEADERS") or "{}")
    except ValueError:
        headers = {}
    if isinstance(headers, dict):
        values += [str(v) for v in headers.values()]
    values = [v for v in values if len(v) >= MIN_SECRET_LENGTH]
    values += [v for k, v in environ.items() if SECRET_ENV_NAME.search(k) and len(v) >= MIN_GENERIC_SECRET_LENGTH]
    return sorted(set(values), key=len, reverse=True)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value)


class Redacted(dict):
    """A dict the Redactor made: redacting it again returns it as it is (plugins that also redact, for
    callers that use them without the core, do not walk the core's payloads a second time)."""


class Redactor:
    """Applies both rules with the secrets of one environment, read once."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        secrets = secret_values(environ)
        self._pattern = re.compile("|".join(map(re.escape, secrets))) if secrets else None

    def text(self, value: str) -> str:
        if "://" in value:  # a password in a URL (scheme://user:password@host)
            value = _URL_PASSWORD.sub(rf"\1{REDACTED}@", value)
        return self._pattern.sub(REDACTED, value) if self._pattern is not None else value

    def __call__(self, payload: Any) -> Any:
        if type(payload) in _PLAIN or type(payload) is Redacted:
            return payload
        if isinstance(payload, str):
            return self.text(payload)
        if isinstance(payload, Mapping):
            return Redacted(
                {
                    self.text(k) if isinstance(k, str) else k: (
                        REDACTED
                        if isinstance(k, str) and _secret_key(k) and not _blank(v) and type(v) not in _PLAIN
                        else (v if type(v) in _PLAIN else self(v))
                    )
                    for k, v in payload.items()
                }
            )
        if isinstance(payload, list | tuple | set | frozenset):
            return type(payload)(self(v) for v in payload)
        if self._pattern is None:
            return payload
        try:  # a path, an array, any object: trackers store its text, so its text must not hold a secret
            text = str(payload)
        except Exception:  # its text cannot be made, so no tracker can store it either
            return payload
        return self.text(text) if self._pattern.search(text) else payload
