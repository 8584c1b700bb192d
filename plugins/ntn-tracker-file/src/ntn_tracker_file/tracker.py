"""FileTracker: one JSON document per run at <TRACKER_DIR>/<experiment_name>.json.

After every hook call the file on disk is a complete JSON document holding everything logged so far:
each hook writes the whole document to a new file and renames it over the run file (`ntn.files.
write_atomic`), so a process killed at any moment leaves either the previous or the new document.
(That costs ~0.2-0.4 ms per hook: nothing a run's wall time shows, docs/benchmarks.md.) A run file
that is a symlink or not a regular file is refused, never written through.
Files attached to the run (`log_artifact`) are copied into <TRACKER_DIR>/.artifacts/<file stem>/ (a
hidden directory: TRACKER_DIR itself holds run files only, as the seed shows it); those of its
provenance (`git.diff`, `packages.txt`), the same for every run of a checkout, are stored once per
content in <TRACKER_DIR>/.artifacts/.by-sha256/<SHA-256> and each run's file of that name is a hard link
to it (`ntn.files.store_once`).
No path below TRACKER_DIR is followed through a symlink: every file there is opened relative to a
descriptor of its directory, each directory opened with O_NOFOLLOW (`ntn.files.open_directory`), and
`check_environment` refuses, before any run, a symlink where a run would write. TRACKER_DIR itself may
be a symlink the user made (it is taken as named).
`started` is the Unix time the run started (of a name's runs read from several backends, `ntn-trackers
summary` counts the newest). While the run is going, `summary.status` is "running"; `finalize` sets the
run's status ("finished", "failed", "interrupted") unless the core has recorded it first. A process killed
with SIGKILL leaves "running", with the file's modification time as the age of its last record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ntn.files import (
    Held,
    check_writable,
    file_stem,
    hold,
    open_directory,
    open_regular,
    release,
    store_once,
    write_atomic,
)
from ntn.tracking import TrackerConfigError, experiment_of
from ntn.tracking.provenance import DIFF_FILE, PACKAGES_FILE

from ntn_tracker_file.jsonsafe import to_json

DEFAULT_DIR = "experiment_logs"
ARTIFACTS = ".artifacts"
STORE = ".by-sha256"  # in ARTIFACTS: a run's directory there is a file stem, which never starts with "."
STORED_ONCE = frozenset({DIFF_FILE, PACKAGES_FILE})  # attached by every run of a process, alike
NAME_OPEN = '{"experiment_name": '

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=str)  # payloads come plain from the core


def _dumps(value: Any) -> str:
    try:
        return _ENCODER.encode(value)
    except ValueError:  # NaN or ±Inf: null in their place, named beside them
        return _ENCODER.encode(to_json(value))


def _experiment_of(document: bytes) -> str | None:
    """The experiment a run file holds (its first key, read without parsing the rest), else None."""
    try:
        text = document.decode("utf-8")
        name = json.JSONDecoder().raw_decode(text, len(NAME_OPEN))[0] if text.startswith(NAME_OPEN) else None
    except ValueError:  # UnicodeDecodeError included
        return None
    return name if isinstance(name, str) else None


def tracker_dir() -> Path:
    return Path(os.environ.get("TRACKER_DIR") or DEFAULT_DIR)


def read_run_file(directory_fd: int, name: str, shown: str) -> tuple[bytes, float]:
    """The content and modification time of the run file `name` in the open directory `directory_fd`,
    read without following a symlink.

    :raises OSError: one line naming `shown` when it is a symlink or no regular file
    """
    with os.fdopen(open_regular(name, directory_fd, f"run file {shown!r}"), "rb") as file:
        return file.read(), os.fstat(file.fileno()).st_mtime


def _lock_name(experiment: str) -> str:
    return f".experiment-{hashlib.sha256(experiment.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}.lock"


def _check_path(path: Path, experiment_name: str) -> None:
    """Refuse a run file that is not a regular file, or that holds another experiment's run (a damaged
    file is replaced)."""
    try:
        with open_directory(path.parent) as directory_fd:
            document = read_run_file(directory_fd, path.name, str(path))[0]
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as err:
        raise TrackerConfigError(str(err)) from None
    previous = _experiment_of(document)
    if previous is not None and previous != experiment_name:
        raise TrackerConfigError(f"{path} already holds experiment {previous!r}, not {experiment_name!r}")


def _allow_open_files(count: int) -> None:
    """Raise this process's limit of open files to `count` where the system allows (POSIX)."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
        wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _refuse_links(directory: Path, run_names: Sequence[str]) -> None:
    """Refuse, in one line, a symlink below TRACKER_DIR where the runs of `run_names` would write: their
    lock files, .artifacts, its store and the runs' directories there, and the files in those."""
    artifacts = directory / ARTIFACTS
    locks = [directory / _lock_name(e) for e in dict.fromkeys(experiment_of({"experiment_name": n}) for n in run_names)]
    places = [artifacts, artifacts / STORE, *(artifacts / file_stem(n) for n in run_names)]
    for path in [*locks, *places]:  # each directory is checked before its files are listed
        entries = path.iterdir() if path in places and path.is_dir() and not path.is_symlink() else ()
        for link in (p for p in (path, *entries) if p.is_symlink()):
            raise TrackerConfigError(
                f"{str(link)!r} in TRACKER_DIR is a symbolic link; refusing to follow it (remove it, or set "
                "TRACKER_DIR to a directory of your own)"
            )


class FileTracker:
    """The `file` backend. Directory: `directory`, else $TRACKER_DIR, else ./experiment_logs."""

    def __init__(self, experiment_name: str, config: dict[str, Any] | None = None, directory: str | None = None):
        self.experiment_name = experiment_name
        self.directory = Path(directory) if directory else tracker_dir()
        self.path = self.directory / f"{file_stem(experiment_name)}.json"
        # the document: head [+ ', "provenance": ' + provenance] + ', "hparams": ' + hparams + ', "metrics_log": ['
        # + ", ".join(entries) + '], "summary": ' + summary; the head's `started`: the Unix time the run started
        self._head = (
            f'{NAME_OPEN}{_dumps(experiment_name)}, "config": {_dumps(config or {})}, "started": {time.time()!r}'
        )
        self._provenance = ""
        self._hparams = "{}"
        self._entries: list[str] = []  # each metrics entry serialised once
        self.summary: dict[str, Any] = {"status": "running"}
        _check_path(self.path, experiment_name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write()
        except OSError as err:
            raise TrackerConfigError(
                f"TRACKER_DIR {str(self.directory)!r} is not a writable directory ({err.strerror or err}); "
                "set TRACKER_DIR to a directory you can write to"
            ) from None

    @classmethod
    def check_environment(cls, run_names: Sequence[str] = ()) -> None:
        """Before any run: TRACKER_DIR can be written, and none of `run_names` would overwrite another
        experiment's file or a file that is not a regular one.

        :raises TrackerConfigError: one line naming the directory or the file
        """
        directory = tracker_dir()
        existing = next(p for p in (directory, *directory.absolute().parents) if p.exists())  # made when a run starts
        try:
            if not existing.is_dir():
                raise NotADirectoryError(20, "Not a directory")
            check_writable(existing)
        except OSError as err:
            raise TrackerConfigError(
                f"TRACKER_DIR {str(directory)!r} is not a writable directory ({err.strerror or err}); "
                "set TRACKER_DIR to a directory you can write to"
            ) from None
        for name in run_names:
            _check_path(directory / f"{file_stem(name)}.json", name)
        _refuse_links(directory, run_names)

    @classmethod
    @contextlib.contextmanager
    def hold_runs(cls, run_names: Sequence[str]) -> Iterator[None]:
        """Lock the experiments of `run_names` in TRACKER_DIR until the block ends, so that no other process
        (a script, a sweep) writes their run files meanwhile.

        :raises TrackerConfigError: another process holds one of them, named with its process id
        """
        directory = tracker_dir()
        cls.check_environment()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackerConfigError(f"TRACKER_DIR {str(directory)!r} cannot be made ({err.strerror})") from None
        experiments = list(dict.fromkeys(experiment_of({"experiment_name": n}) for n in run_names))
        _allow_open_files(len(experiments) + 256)  # one lock each: a sweep of many configurations
        with contextlib.ExitStack() as held:
            try:
                directory_fd = held.enter_context(open_directory(directory))
            except OSError as err:
                raise TrackerConfigError(str(err)) from None
            for experiment in experiments:
                name = _lock_name(experiment)
                try:
                    fd = hold(name, directory_fd)
                except Held as err:
                    raise TrackerConfigError(
                        f"experiment {experiment!r} in TRACKER_DIR {str(directory)!r} is being trained by {err}; "
                        "wait for it, or give this run another name"
                    ) from None
                except OSError as err:
                    raise TrackerConfigError(f"{err} in TRACKER_DIR {str(directory)!r}") from None
                held.callback(release, name, fd, directory_fd)
            yield

    @classmethod
    def where(cls) -> str:
        """Where this backend keeps its runs, in a few words (the scripts' closing lines)."""
        return f"file: {tracker_dir()}/"

    @classmethod
    def source(cls) -> str:
        """What `ntn-trackers summary --from` reads this process's runs back from."""
        return f"file:{tracker_dir()}"

    def _write(self) -> None:
        summary = _dumps(self.summary)
        metrics = ", ".join(self._entries)
        document = f'{self._head}{self._provenance}, "hparams": {self._hparams}, "metrics_log": [{metrics}]'
        with open_directory(self.directory) as directory_fd:
            write_atomic(self.path.name, f'{document}, "summary": {summary}}}\n', directory_fd)

    def log_provenance(self, provenance: dict[str, Any]) -> None:
        """Under the run file's key "provenance" (beside the seed's keys); its files go to log_artifact."""
        self._provenance = f', "provenance": {_dumps(provenance)}'
        self._write()

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        self._hparams = _dumps(hparams)
        self._write()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._entries.append(_dumps({"step": step} | metrics))
        self._write()

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.summary.update(summary)
        self._write()

    def log_artifact(self, path: str, name: str) -> None:
        """Copy the file to <TRACKER_DIR>/.artifacts/<run file stem>/<name> (renamed into place whole); a
        provenance file as a hard link to its one copy in .artifacts/.by-sha256/."""
        with open(path, "rb") as source:
            content = source.read()
        with open_directory(self.directory, ARTIFACTS, self.path.stem, create=True) as run_fd:
            if name not in STORED_ONCE:
                write_atomic(file_stem(name), content, run_fd)
                return
            with open_directory(self.directory, ARTIFACTS, STORE, create=True) as store_fd:
                store_once(content, store_fd, name, run_fd)

    def finalize(self, status: str = "finished") -> None:
        self.summary["status"] = status  # the run's status comes from here only
        self._write()
