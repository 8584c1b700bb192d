"""What made a run: its code, command, versions and machine, gathered once per process.

`gather(directory)` is what every run of this process shares (a sweep's driver runs git once, not once
per run); the caller adds what is its own (`Provenance.merged`: the data, the device). The core hands the
record to each tracker's `log_provenance` and attaches `files` (the uncommitted diff, the package list)
to the run. The diff holds no secret: what detect-secrets finds in its added lines, and the values of
the secret variables in any line, are redacted here, once per process (`redact_diff`). A directory
outside git, or a machine without git, is recorded as such, never an error.
Measured cost: docs/benchmarks.md ("Provenance").
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ntn.tracking.redact import REDACTED, Redactor

DIFF_LIMIT = 1_000_000  # bytes of the uncommitted diff attached, whole lines (the hash is of what is attached)
CORE_SOURCE = Path("core", "src", "ntn")  # where a checkout of this project holds the source of `ntn`
DIFF_FILE = "git.diff"
PACKAGES_FILE = "packages.txt"
GIT_TIMEOUT_S = 10.0
_METADATA_DIR = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+?)(?:-py[\d.]+)?\.(?:dist|egg)-info$")


@dataclass(frozen=True)
class Provenance:
    """`record`: JSON-like sections code, command, versions, machine (and data); `files`: name → content
    attached to each run."""

    record: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)

    def merged(self, **sections: dict[str, Any]) -> Provenance:
        """A copy with each section given added to (or over) the one of that name."""
        record = dict(self.record)
        for name, values in sections.items():
            record[name] = {**record.get(name, {}), **values}
        return Provenance(record, self.files)


def _git(directory: Path, *arguments: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(directory), *arguments], capture_output=True, check=True, timeout=GIT_TIMEOUT_S
    ).stdout


def code(directory: Path) -> tuple[dict[str, Any], bytes | None]:
    """The git state of the working tree holding `directory`, and its uncommitted diff (None when clean).
    Dirty means a tracked file differs from the commit; untracked files do not count."""
    found: dict[str, Any] = {"directory": str(directory)}
    try:
        status = _git(directory, "status", "--porcelain=v2", "--branch", "--untracked-files=no").decode()
    except FileNotFoundError:
        return found | {"git": "git is not installed"}, None
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return found | {"git": "not a git repository"}, None
    headers = dict(line[2:].split(" ", 1) for line in status.splitlines() if line.startswith("# "))
    commit = headers.get("branch.oid")
    found |= {
        "git_commit": None if commit == "(initial)" else commit,
        "git_branch": None if headers.get("branch.head") == "(detached)" else headers.get("branch.head"),
        "git_dirty": any(not line.startswith("#") for line in status.splitlines()),
    }
    if not found["git_dirty"]:
        return found, None
    try:
        diff = _git(directory, "diff", "HEAD", "--binary") if found["git_commit"] else b""
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        diff = b""
    whole = len(diff)
    if whole > DIFF_LIMIT:  # cut at a line's end: a secret is never cut in two, half of it unrecognised
        diff = diff[: diff.rfind(b"\n", 0, DIFF_LIMIT) + 1]
    diff, redacted = redact_diff(diff)
    found |= {"git_diff_sha256": hashlib.sha256(diff).hexdigest(), "git_diff_bytes": whole}
    if whole > DIFF_LIMIT:
        found["git_diff_attached_bytes"] = len(diff)
    return found | {"git_diff_file": DIFF_FILE, "git_diff_redacted_lines": redacted}, diff


def _sources(package: Path) -> dict[str, bytes]:
    # a regular file each: an editor's lock file `.#trainer.py` is a dangling link
    return {p.relative_to(package).as_posix(): p.read_bytes() for p in sorted(package.rglob("*.py")) if p.is_file()}


def core_source(directory: Path) -> Path | None:
    """The source of `ntn` in the checkout of this project holding `directory` (its core/src/ntn), or None."""
    return next(
        (d / CORE_SOURCE for d in (directory, *directory.parents) if (d / CORE_SOURCE / "__init__.py").is_file()), None
    )


def imported_core(directory: Path) -> dict[str, Any]:
    """Where the `ntn` this process runs comes from, when not from the checkout holding `directory` (an installed
    copy: `pip install ./core`), and the files of the checkout's core/src/ntn it differs in: the checkout's
    diff shows their changes, yet the runs train without them. {} for the checkout's own `ntn` (an editable
    install), or outside a checkout of this project."""
    import ntn

    source = core_source(directory)
    imported = Path(ntn.__file__).resolve().parent
    if source is None or imported == source.resolve():
        return {}
    try:
        ours, theirs = _sources(source), _sources(imported)
    except OSError:  # a file that cannot be read: which ntn ran is still said, never an error
        return {"ntn_imported_from": str(imported)}
    stale = sorted(
        (CORE_SOURCE / name).as_posix() for name in ours.keys() | theirs.keys() if ours.get(name) != theirs.get(name)
    )
    return {"ntn_imported_from": str(imported), **({"ntn_differs_in": stale} if stale else {})}


def redact_diff(diff: bytes) -> tuple[bytes, int]:
    """`diff` with the secrets in it redacted, and how many of its lines held one: in the added lines,
    what detect-secrets' default plugins find (cloud and API keys, tokens, private keys, passwords
    assigned to secret-looking names, high-entropy strings); in every line, the values of the secret
    variables and URLs' credentials (ntn.tracking.redact.Redactor)."""
    from detect_secrets.core.scan import scan_file
    from detect_secrets.settings import default_settings

    # importing detect-secrets routes every warning of the process to its logger (`logging.captureWarnings`
    # in detect_secrets.core.log), where the core's TrackerWarnings were lost: warnings go to stderr again
    logging.captureWarnings(False)
    lines = diff.decode("utf-8", "surrogateescape").split("\n")
    added = [i for i, line in enumerate(lines) if line.startswith("+")]
    found: dict[int, set[str]] = {}  # line index → the secrets detect-secrets found in it
    with tempfile.TemporaryDirectory() as directory:
        scanned = os.path.join(directory, "added_lines.txt")  # one added line per line, in order
        with open(scanned, "w", encoding="utf-8", errors="replace") as file:
            file.writelines(lines[i][1:] + "\n" for i in added)
        with default_settings():
            for secret in scan_file(scanned):
                found.setdefault(added[secret.line_number - 1], set()).add(secret.secret_value or "")
    redact, redacted = Redactor(), 0
    for i, line in enumerate(lines):
        clean = line
        for value in sorted(found.get(i, ()), key=len, reverse=True):  # one not found whole: the whole line
            clean = clean.replace(value, REDACTED) if value and value in clean else "+" + REDACTED
        clean = redact.text(clean)
        redacted += clean != line
        lines[i] = clean
    return "\n".join(lines).encode("utf-8", "surrogateescape"), redacted


def packages() -> dict[str, str]:
    """Every installed distribution → its version, read off the names of the metadata directories on
    sys.path (`name-version.dist-info`), the first found of each name, as an import would; ~1 ms where
    reading each distribution's metadata takes ~60 ms."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if match := _METADATA_DIR.match(name):
                found.setdefault(match["name"].lower().replace("_", "-").replace(".", "-"), match["version"])
    return dict(sorted(found.items()))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
    }


def command() -> dict[str, Any]:
    """This process's command line and working directory."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    script = ["-m", spec.name] if spec is not None and spec.name != "__main__" else [sys.argv[0]]
    return {"argv": ["python", *script, *sys.argv[1:]], "cwd": os.getcwd()}


@functools.lru_cache(maxsize=8)
def gather(directory: str | os.PathLike | None = None) -> Provenance:
    """This process's provenance, once per code directory: `directory` (default: the main script's, else
    the working directory) for the code; the command, versions and machine of this process."""
    if directory is None:
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        directory = Path(main).resolve().parent if main else Path.cwd()
    code_record, diff = code(Path(directory))
    code_record |= imported_core(Path(directory))
    installed = packages()
    package_list = "".join(f"{name}=={version}\n" for name, version in installed.items()).encode()
    versions = {"python": platform.python_version()} | {name: installed.get(name) for name in ("ntn", "torch", "numpy")}
    versions |= {"packages_file": PACKAGES_FILE, "packages_sha256": hashlib.sha256(package_list).hexdigest()}
    files = {PACKAGES_FILE: package_list} | ({DIFF_FILE: diff} if diff is not None else {})
    record = {"code": code_record, "command": command(), "versions": versions, "machine": machine()}
    return Provenance(record, files)
