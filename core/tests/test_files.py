"""ntn.files: the file names, atomic writes, checks and locks every writer of this project shares."""

import errno
import hashlib
import os
import subprocess
import sys

import pytest
from ntn.files import (
    Held,
    check_regular,
    file_stem,
    hold,
    lock_nowait,
    open_directory,
    release,
    store_once,
    write_atomic,
)


def test_file_stem_keeps_plain_names_and_never_maps_two_names_to_one():
    assert file_stem("mpo2_experiment") == "mpo2_experiment"
    odd = ["bond 4", "bond:4", "../up", ".hidden", "é", "x" * 200, ""]
    stems = [file_stem(name) for name in odd]
    assert len(set(stems)) == len(odd)
    assert all("/" not in s and not s.startswith(".") and len(s) <= 170 for s in stems)


def test_write_atomic_replaces_the_content_and_refuses_what_is_not_a_file(tmp_path):
    path = tmp_path / "results.json"
    write_atomic(path, "old")
    write_atomic(path, b"new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    (tmp_path / "link").symlink_to(path)
    with pytest.raises(OSError, match="is a symbolic link; refusing"):
        write_atomic(tmp_path / "link", "through")
    with pytest.raises(OSError, match="is a directory"):
        check_regular(tmp_path)
    assert path.read_text() == "new"


def test_lock_nowait_refuses_a_second_holder_until_the_first_closes(tmp_path):
    path = tmp_path / "journal"
    path.touch()
    first, second = os.open(path, os.O_RDONLY), os.open(path, os.O_RDONLY)
    try:
        assert lock_nowait(first)
        assert not lock_nowait(second)
        os.close(first)
        assert lock_nowait(second)
    finally:
        os.close(second)


def test_hold_names_the_live_holder_and_is_free_again_once_it_dies(tmp_path):
    lock = tmp_path / ".experiment.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys; from ntn.files import hold; hold({str(lock)!r}); print(1, flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline() == "1\n"
    with pytest.raises(Held, match=f"process {holder.pid} since "):
        hold(lock)
    holder.kill()  # however a holder ends, its lock goes with it
    holder.wait()
    fd = hold(lock)
    release(lock, fd)
    assert not lock.exists()


def test_open_directory_follows_no_symlink_below_its_root_and_names_the_one_it_met(tmp_path):
    (tmp_path / "victim").mkdir()
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "root" / "a" / "b").symlink_to(tmp_path / "victim")
    (tmp_path / "alias").symlink_to(tmp_path / "root")  # the root itself: taken as named
    with open_directory(tmp_path / "alias", "a", "new", create=True) as fd:
        write_atomic("file", "kept", fd)
    assert (tmp_path / "root" / "a" / "new" / "file").read_text() == "kept"
    with pytest.raises(OSError, match=r"'.*/a/b' is a symbolic link, not a directory; refusing to follow it"):
        with open_directory(tmp_path / "root", "a", "b", "c", create=True):
            pass
    assert list((tmp_path / "victim").iterdir()) == []


def test_store_once_keeps_one_copy_and_replaces_a_stored_file_that_does_not_match_its_name(tmp_path):
    for name in ("store", "one", "two"):
        (tmp_path / name).mkdir()
    digest = hashlib.sha256(b"diff").hexdigest()
    (tmp_path / "store" / digest).write_bytes(b"planted")
    with open_directory(tmp_path / "store") as store, open_directory(tmp_path / "one") as one:
        assert store_once(b"diff", store, "git.diff", one) == digest
    with open_directory(tmp_path / "store") as store, open_directory(tmp_path / "two") as two:
        store_once(b"diff", store, "git.diff", two)
    assert [p.name for p in (tmp_path / "store").iterdir()] == [digest]
    assert (tmp_path / "store" / digest).stat().st_nlink == 3 and (
        tmp_path / "two" / "git.diff"
    ).read_bytes() == b"diff"


def test_store_once_again_for_a_name_that_holds_it_leaves_no_other_file(tmp_path):
    """Failed before: a run trained again, or launched again, attached its diff again, and each time a
    `.git.diff.<random>.tmp` stayed beside it (renaming a name onto another of the same file does nothing)."""
    for name in ("store", "run"):
        (tmp_path / name).mkdir()
    with open_directory(tmp_path / "store") as store, open_directory(tmp_path / "run") as run:
        for _ in range(3):
            store_once(b"diff", store, "git.diff", run)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["git.diff"]
    assert (tmp_path / "run" / "git.diff").stat().st_nlink == 2


def test_store_once_writes_a_copy_where_no_hard_link_can_be_made(tmp_path, monkeypatch):
    """Another user's stored file (fs.protected_hardlinks) or 65000 links to it: the run still gets its file."""

    def refused(*args, **kwargs):
        raise OSError(errno.EMLINK, "Too many links")

    (tmp_path / "store").mkdir()
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(os, "link", refused)
    with open_directory(tmp_path / "store") as store, open_directory(tmp_path / "run") as run:
        store_once(b"diff", store, "git.diff", run)
    copy = tmp_path / "run" / "git.diff"
    assert copy.read_bytes() == b"diff" and copy.stat().st_nlink == 1


STORE_MANY = """
import sys
from ntn.files import open_directory, store_once
for i in range(200):
    with open_directory(sys.argv[1], sys.argv[2]) as run_fd, open_directory(sys.argv[1], "store") as store_fd:
        store_once(f"content {i}".encode(), store_fd, f"file{i}.txt", run_fd)
"""


def test_store_once_by_two_processes_at_once_gives_each_its_files(tmp_path):
    """Failed on main (a sweep's run failed in log_artifact): a writer that found the stored file just as
    another writer of the same content renamed its copy over it got FileNotFoundError from the link."""
    for directory in ("store", "a", "b"):
        (tmp_path / directory).mkdir()
    writers = [
        subprocess.Popen([sys.executable, "-c", STORE_MANY, str(tmp_path), run], stderr=subprocess.PIPE, text=True)
        for run in ("a", "b")
    ]
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    for run in ("a", "b"):
        assert [(tmp_path / run / f"file{i}.txt").read_bytes() for i in range(200)] == [
            f"content {i}".encode() for i in range(200)
        ]
    assert len(list((tmp_path / "store").iterdir())) == 200
