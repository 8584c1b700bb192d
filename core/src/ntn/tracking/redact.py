"""What trackers receive: payloads made plain and stripped of secrets, once, by the core.

Plain: dicts (str keys), lists, str, int, float (NaN and ±Inf kept), bool and None. numpy and torch
values become numbers and lists, paths become strings, tuples and sets become lists, and anything else
becomes its `str()`, never silently dropped.

Secrets, by rules applied recursively:
- by name: the value of a key that looks secret (`*secret*`, `*token*`, `*password*`, `*_key`,
  `authorization`, `*headers*`) is replaced whole, unless it is a number or a boolean (a metric such as
  `tokens_per_s` stays a number);
- in URLs: the password of `scheme://user:password@host` is replaced;
- by value: any occurrence of a current secret from the environment inside any string is replaced;
  any other value (a path, an array, an object) whose text holds one becomes that text, redacted.
  The secrets are, generically, the value of every variable whose name has a part (between
  underscores) that marks it as secret: TOKEN, SECRET, PASSWORD, PASSWD, KEY, CREDENTIAL(S), AUTH,
  COOKIE, PRIVATE, HEADERS (also as the end of a part: APIKEY, MYTOKEN), or CLIENT_ID; where that value
  is a JSON object (as a header map is), each of its values; plus whatever installed plugins declare: an
  entry point in the group `ntn.secrets` names a function `(environ) -> iterable of secret strings`.
  Every such value is redacted whatever its length. The core names no plugin's variables.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache, lru_cache
from os import PathLike
from typing import Any

REDACTED = "[REDACTED]"
SECRETS_GROUP = "ntn.secrets"
SECRET_KEY = re.compile(r"secret|token|password|passwd|_key$|^key$|authorization|headers?$|cookie", re.IGNORECASE)
SECRET_ENV_NAME = re.compile(
    r"(?:^|_)(?:[A-Z0-9]*(?:TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIALS?|COOKIE|HEADERS)|AUTH|PRIVATE|CLIENT_ID)(?:_|$)",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^@\s/]+@")
_NUMBERS = frozenset({float, int, bool, type(None)})  # values with nothing to redact or convert


@lru_cache(maxsize=4096)  # a run repeats its keys every step
def _secret_key(key: str) -> bool:
    return SECRET_KEY.search(key) is not None


@cache
def _declarations() -> list[Callable[[Mapping[str, str]], Iterable[str]]]:
    """The `ntn.secrets` functions of the installed plugins, loaded once per process."""
    from ntn.tracking.discovery import plugins

    return [entry_point.load() for entry_point in plugins(SECRETS_GROUP).values()]


def _object_values(text: str) -> list[str]:
    """The values of `text` read as a JSON object (e.g. a header map); [] for anything else."""
    if not text.lstrip().startswith("{"):
        return []
    try:
        found = json.loads(text)
    except ValueError:
        return []
    return [str(v) for v in found.values()] if isinstance(found, dict) else []


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret strings currently in the environment, longest first."""
    environ = os.environ if environ is None else environ
    named = [v for k, v in environ.items() if SECRET_ENV_NAME.search(k)]
    inside = [x for v in named for x in _object_values(v)]  # e.g. the values of a header map
    declared = [str(v) for declare in _declarations() for v in declare(environ)]
    return sorted({v for v in named + inside + declared if v}, key=len, reverse=True)


class Redactor:
    """Applies the rules with the secrets of one environment, read once."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        secrets = secret_values(environ)
        self._pattern = re.compile("|".join(map(re.escape, secrets))) if secrets else None

    def text(self, value: str) -> str:
        if "://" in value:  # a password in a URL (scheme://user:password@host)
            value = _URL_PASSWORD.sub(rf"\1{REDACTED}@", value)
        return self._pattern.sub(REDACTED, value) if self._pattern is not None else value

    def __call__(self, payload: Any) -> Any:
        """A plain copy of `payload` without secrets."""
        if type(payload) in _NUMBERS:  # the set: a fast path for metrics
            return payload
        if isinstance(payload, str):
            return self.text(payload)
        if isinstance(payload, bool | int | float):
            return payload
        if isinstance(payload, Mapping):
            return {self.text(str(k)): self._item(str(k), v) for k, v in payload.items()}
        if isinstance(payload, list | tuple | set | frozenset):
            return [self(v) for v in payload]
        if not isinstance(payload, PathLike):
            tolist = getattr(payload, "tolist", None)  # numpy scalars and arrays, torch tensors
            if callable(tolist):
                try:
                    return self(tolist())
                except Exception:  # an object whose tolist() is something else entirely
                    pass
        try:
            return self.text(str(payload))
        except Exception:  # its text cannot be made, so no tracker could store it either
            return f"<unprintable {type(payload).__name__}>"

    def _item(self, key: str, value: Any) -> Any:
        if type(value) in _NUMBERS:
            return value
        value = self(value)
        secret = _secret_key(key) and value not in ("", None) and not isinstance(value, bool | int | float)
        return REDACTED if secret else value
