"""Provenance gathered from real git checkouts, and what `reproduce` says differs."""

import hashlib
import shutil
from pathlib import Path

import ntn
from ntn.tracking.provenance import DIFF_FILE, PACKAGES_FILE, code, gather, imported_core
from ntn.tracking.redact import REDACTED
from ntn.tracking.reproduce import agrees, differences, figures
from ntn.tracking.testing import commit_all, git


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def committed(directory):
    (directory / "a.py").write_text("x = 1\n")
    return commit_all(directory)


def test_a_clean_checkout_has_its_commit_and_no_diff(tmp_path):
    commit = committed(tmp_path)
    (tmp_path / "untracked.txt").write_text("scratch")  # untracked files do not make a checkout dirty
    found, diff = code(tmp_path)
    assert found["git_commit"] == commit and found["git_dirty"] is False and diff is None
    assert "git_diff_sha256" not in found


def test_a_dirty_checkout_has_the_hash_of_its_attached_diff_cut_at_a_line_end_by_the_bound(tmp_path, monkeypatch):
    committed(tmp_path)
    (tmp_path / "a.py").write_text("x = 2\n" * 1000)
    whole = git(tmp_path, "diff", "HEAD", "--binary")
    monkeypatch.setattr("ntn.tracking.provenance.DIFF_LIMIT", 100)
    found, diff = code(tmp_path)
    attached = whole[: whole.rfind(b"\n", 0, 100) + 1]
    assert found["git_dirty"] is True and diff == attached and found["git_diff_sha256"] == sha256(attached)
    assert found["git_diff_bytes"] == len(whole) and found["git_diff_attached_bytes"] == len(attached) <= 100
    assert found["git_diff_redacted_lines"] == 0


AWS_KEY, GITHUB_TOKEN, VARIABLE_VALUE = (
    "AKIAIOSFODNN7EXAMPLX",
    "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5",
    "vAl-9u3-7x",
)


def test_secrets_in_the_uncommitted_diff_are_redacted_and_counted(tmp_path, monkeypatch):
    """Failed on main: a token in an uncommitted change went into git.diff whole (redaction knew only the
    secret variables' values), and the record did not say how many lines were redacted."""
    monkeypatch.setenv("MY_SERVICE_TOKEN", VARIABLE_VALUE)
    (tmp_path / "settings.py").write_text("A = 1\nnote = 'keep me'\n")
    commit_all(tmp_path)
    lines = [f"aws_id = {AWS_KEY!r}", f'GITHUB = "{GITHUB_TOKEN}"', f"call(login={VARIABLE_VALUE!r})", "A = 2"]
    (tmp_path / "settings.py").write_text("\n".join(lines) + "\nnote = 'keep me'\n")
    found, diff = code(tmp_path)
    text = diff.decode()
    assert AWS_KEY not in text and GITHUB_TOKEN not in text and VARIABLE_VALUE not in text
    assert "+A = 2" in text and " note = 'keep me'" in text and "-A = 1" in text  # the rest as it was
    assert f"+call(login='{REDACTED}')" in text
    assert found["git_diff_redacted_lines"] == 3 == text.count(REDACTED)
    assert found["git_diff_sha256"] == sha256(diff) and found["git_diff_bytes"] > len(diff)


def test_no_repository_and_no_git_are_recorded_never_raised(tmp_path, monkeypatch):
    assert code(tmp_path)[0] == {"directory": str(tmp_path), "git": "not a git repository"}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    assert code(tmp_path)[0] == {"directory": str(tmp_path), "git": "git is not installed"}


def test_gather_lists_every_package_and_the_machine_once_per_process(tmp_path):
    committed(tmp_path)
    provenance = gather(tmp_path)
    assert gather(tmp_path) is provenance  # a sweep's worker gathers once, not per run
    listed = dict(line.split("==") for line in provenance.files[PACKAGES_FILE].decode().splitlines())
    assert listed["pluggy"] == __import__("pluggy").__version__ and DIFF_FILE not in provenance.files
    versions = provenance.record["versions"]
    assert versions["packages_sha256"] == hashlib.sha256(provenance.files[PACKAGES_FILE]).hexdigest()
    assert provenance.record["machine"]["cores"] >= 1 and provenance.record["machine"]["cpu"]


def test_an_installed_ntn_is_recorded_with_the_files_the_checkout_s_core_differs_in(tmp_path):
    imported = Path(ntn.__file__).resolve().parent
    core = tmp_path / "checkout" / "core" / "src" / "ntn"
    shutil.copytree(imported, core, ignore=shutil.ignore_patterns("__pycache__"))
    experiments = tmp_path / "checkout" / "experiments"
    experiments.mkdir()
    assert imported_core(experiments) == {"ntn_imported_from": str(imported)}  # a copy as installed: no difference
    (core / ".#trainer.py").symlink_to("root@host.1234:1700000000")  # an editor's lock: a dangling link, no module
    assert imported_core(experiments) == {"ntn_imported_from": str(imported)}
    (core / "trainer.py").write_text("edited\n")
    (core / "new_module.py").write_text("x = 1\n")
    (core / "losses.py").unlink()
    assert imported_core(experiments) == {
        "ntn_imported_from": str(imported),
        "ntn_differs_in": ["core/src/ntn/losses.py", "core/src/ntn/new_module.py", "core/src/ntn/trainer.py"],
    }
    assert imported_core(tmp_path) == {}  # no checkout of this project above it


RECORDED = {
    "code": {"git_commit": "a" * 40, "git_dirty": True, "git_diff_sha256": "d" * 64},
    "versions": {"python": "3.11.9", "torch": "2.13.0", "packages_sha256": "p" * 64, "trackers": {"file": "x"}},
    "machine": {"host": "n1", "cpu": "Xeon", "device": "cpu", "device_name": "Xeon"},
    "data": {"name": "california_housing", "sha256": "e" * 64, "data_seed": 0, "source": "/d/cal_housing.data"},
}


def test_the_same_provenance_differs_in_nothing_and_each_change_is_one_line():
    assert differences(RECORDED, RECORDED) == []
    now = {
        "code": {"git_commit": "b" * 40, "git_dirty": False},
        "versions": RECORDED["versions"] | {"torch": "2.14.0", "packages_sha256": "q" * 64},
        "machine": {"host": "n2", "cpu": "Xeon", "device": "cuda:0", "device_name": "NVIDIA H200"},
        "data": RECORDED["data"] | {"sha256": "f" * 64},
        "settings_not_recorded": {"NEW": 3},
    }
    now["code"] |= {"ntn_imported_from": "/venv/ntn", "ntn_differs_in": ["core/src/ntn/trainer.py"]}
    assert differences(RECORDED, now) == [
        f"code: commit {'a' * 40} recorded, {'b' * 40} now",
        "code: uncommitted changes (diff SHA-256 dddddddddddd…) recorded, no uncommitted changes now "
        "(the recorded diff is the run's git.diff)",
        "code: core/'s own recorded, an installed ntn differing from core/ in core/src/ntn/trainer.py now",
        "versions: torch 2.13.0 recorded, 2.14.0 now",
        "versions: the installed packages differ from the recorded list (the run's packages.txt)",
        "data: california_housing SHA-256 eeeeeeeeeeee… recorded, ffffffffffff… now (/d/cal_housing.data)",
        "device: cpu (Xeon) recorded, cuda:0 (NVIDIA H200) now",
        "machine: host n1 (Xeon) recorded, host n2 (Xeon) now",
        "settings: NEW is not in the record (added since); its default 3 is used",
    ]


def test_figures_are_the_summary_s_numbers_and_agree_within_the_tolerance():
    summary = {"seed": 0, "loss": 0.25, "test_r2": 0.73, "best_epoch": 9, "success": True, "error": None}
    assert figures(summary) == {"loss": 0.25, "test_r2": 0.73, "best_epoch": 9}
    assert agrees(0.73, 0.73 * (1 + 1e-9)) and not agrees(0.73, 0.73 * (1 + 1e-5))
    assert agrees(0.0, 1e-12) and agrees(float("nan"), float("nan")) and not agrees(1.0, float("nan"))
