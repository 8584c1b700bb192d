"""What trackers receive: payloads made plain and stripped of secrets, once, by the core.

Plain: dicts (str keys), lists, str, int, float (NaN and ±Inf kept), bool and None. numpy and torch
values become numbers and lists, paths become strings, tuples and sets become lists, and anything else
becomes its `str()`, never silently dropped.

Secrets, by rules applied recursively to values (keys are never altered: they name metrics and settings):
- by name: the value of a key that looks secret (`*secret*`, `*token*`, `*password*`, `*_key`,
  `authorization`, `*headers*`) is replaced whole, unless it is a number or a boolean (a metric such as
  `tokens_per_s` stays a number);
- in URLs (`without_url_credentials`): the user information of `scheme://userinfo@host` is found by
  parsing the URL, as everything before the last '@' of its authority (a password may hold '@', '/' or a
  space): a password is replaced (`https://alice:[REDACTED]@host`), and so is a user part without one, as
  that is how tokens are given (`https://[REDACTED]@host`);
- by value: a current secret from the environment is replaced wherever it stands as a whole token (not
  next to a letter or digit), never inside another word; any other value (a path, an array, an object)
  whose text holds one becomes that text, redacted.
  The secrets are, generically, the value of every variable whose name has a part (between
  underscores) that marks it as secret: TOKEN, SECRET, PASSWORD, PASSWD, KEY, CREDENTIAL(S), AUTH,
  COOKIE, PRIVATE, HEADERS (also as the end of a part: APIKEY, MYTOKEN), or CLIENT_ID; where that value
  is a JSON object (as a header map is), each of its values; plus whatever installed plugins declare: an
  entry point in the group `ntn.secrets` names a function `(environ) -> iterable of secret strings`.
  Not secrets: flags (`1`, `true`, `off`, ...) and numbers shorter than MIN_SECRET_LENGTH; any other value
  that short is no credential either (it is guessed in seconds) and, as a whole token, is an ordinary
  word or number: it is not redacted, and one line on stderr names its variable, once per process.
  The core names no plugin's variables.
"""

from __future__ import annotations

import json
import os
import re
import sys
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
MIN_SECRET_LENGTH = 6  # shorter: no credential (guessed in seconds), and whole words such as `admin`, `1234`
FLAGS = frozenset({"1", "0", "true", "false", "yes", "no", "on", "off"})
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"
_URL = re.compile(rf"{_SCHEME}(?:(?!{_SCHEME})[^'\"`<>\r\n])*")  # to a quote, a line's end or the next URL
_warned: set[str] = set()  # the variables whose too-short value was reported, once per process
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


def _usable(source: str, value: str) -> bool:
    """Whether `value` (of the variable or plugin `source`) is redacted; a too-short one is reported once."""
    if value.lower() in FLAGS or (len(value) < MIN_SECRET_LENGTH and _NUMBER.fullmatch(value)):
        return False
    if len(value) < MIN_SECRET_LENGTH:
        if source not in _warned:
            _warned.add(source)
            print(
                f"ntn.tracking: warning: {source} is shorter than {MIN_SECRET_LENGTH} characters, too short for "
                "a credential: its value is not redacted",
                file=sys.stderr,
            )
        return False
    return True


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret strings currently in the environment that are redacted, longest first."""
    environ = os.environ if environ is None else environ
    named = [(k, v) for k, v in environ.items() if SECRET_ENV_NAME.search(k)]
    inside = [(f"a value of {k}", x) for k, v in named for x in _object_values(v)]  # e.g. of a header map
    declared = [
        (f"a value declared by {declare.__module__}", str(v)) for declare in _declarations() for v in declare(environ)
    ]
    found = {v for source, v in named + inside + declared if v and _usable(source, v)}
    return sorted(found, key=len, reverse=True)


def without_url_credentials(text: str) -> str:
    """`text` with the user information of each URL in it redacted: the password, or the whole user part
    when it has none (a token given as `https://TOKEN@host`). A URL runs from its scheme to a quote, the
    line's end or the next URL; its user information is everything before the last '@' of its authority,
    and the authority runs to that '@' whatever comes before it: an unencoded password may hold '/' (where
    `urllib.parse.urlsplit` would end the authority and show the rest of it), '@' or a space."""
    return _URL.sub(_url_without_credentials, text) if "://" in text else text


def _url_without_credentials(url: re.Match[str]) -> str:
    scheme, _, rest = url[0].partition("://")
    at = rest.rfind("@")
    if at < 0:
        return url[0]
    user, colon, _ = rest[:at].partition(":")
    kept = f"{user}:" if colon and user else ""
    return f"{scheme}://{kept}{REDACTED}{rest[at:]}"


class Redactor:
    """Applies the rules with the secrets of one environment, read once."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        secrets = secret_values(environ)
        whole = "|".join(map(re.escape, secrets))  # as whole tokens: not next to a letter or digit
        self._pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{whole})(?![A-Za-z0-9])") if secrets else None

    def text(self, value: str) -> str:
        value = without_url_credentials(value)
        return self._pattern.sub(REDACTED, value) if self._pattern is not None else value

    def holds_secret(self, value: str) -> bool:
        """Whether `value` holds a secret; a name that does is refused (names are never altered)."""
        return self.text(value) != value

    def __call__(self, payload: Any) -> Any:
        """A plain copy of `payload` without secrets."""
        if type(payload) in _NUMBERS:  # the set: a fast path for metrics
            return payload
        if isinstance(payload, str):
            return self.text(payload)
        if isinstance(payload, bool | int | float):
            return payload
        if isinstance(payload, Mapping):
            return {str(k): self._item(str(k), v) for k, v in payload.items()}
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
