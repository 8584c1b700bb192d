import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap
import time
import warnings

import ntn_tracker_file
import numpy as np
import pytest
import torch
from ntn.tracking import TrackerConfigError, start_run
from ntn.tracking.testing import (
    check_config_error,
    check_provenance,
    check_reader,
    commit_all,
    run_conformance,
    run_in_dirty_repository,
)
from ntn_tracker_file import FileTracker, file_stem, load


def strict_json(path):
    """Parse as strict JSON: NaN/Infinity literals are rejected."""

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"), parse_constant=reject)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRACKER_DIR", raising=False)
    monkeypatch.setenv("TRACKER_BACKEND", "file")


def the_file(name):
    return pathlib.Path("experiment_logs") / f"{file_stem(name)}.json"


def test_entry_point_is_installed():
    from ntn.tracking import installed

    assert installed()["file"].value == "ntn_tracker_file:FileTracker"


def test_passes_the_conformance_kit_and_records_what_it_was_sent():
    run = run_conformance(FileTracker)
    doc = load(the_file(run.experiment_name))
    assert doc["experiment_name"] == run.experiment_name
    assert doc["config"]["jitter"] == run.config["jitter"]
    assert doc["config"]["seeds"] == [0, 1, 2]
    assert doc["hparams"] == run.hparams
    assert doc["provenance"] == run.provenance
    assert [entry["step"] for entry in doc["metrics_log"]] == [step for step, _ in run.metrics]
    for entry, (_, metrics) in zip(doc["metrics_log"], run.metrics):
        for key, value in metrics.items():
            assert entry[key] == value or (math.isnan(value) and math.isnan(entry[key]))
    assert doc["summary"] == run.summary | {"status": "failed"}  # finalize's status
    strict_json(the_file(run.experiment_name))
    check_reader("file", "experiment_logs", run)
    pathlib.Path("a-file").write_text("")
    check_config_error("file", {"TRACKER_DIR": "a-file"}, "TRACKER_DIR")
    name, content = run.artifact
    (copy,) = (the_file(run.experiment_name).parent / ".artifacts" / the_file(run.experiment_name).stem).iterdir()
    assert copy.read_bytes() == content and name.replace(" ", "_").split("✓")[0] in copy.name


def test_document_has_the_seed_structure_and_two_keys_more():
    began = time.time()
    with start_run("mpo2_experiment_seed0", {"model": "MPO2", "L": 3}) as run:
        run.log_hparams({"bond_dim": 6})
        run.log_metrics({"loss": 6.64, "r2": -3.88}, step=-1)
        run.log_metrics({"loss": 0.27, "r2": 0.80, "reg_loss": 0.86, "jitter": 0.05}, step=0)
        run.log_summary({"seed": 0, "loss": 0.27, "r2": 0.80, "success": True})
    document = strict_json("experiment_logs/mpo2_experiment_seed0.json")
    assert list(document) == ["experiment_name", "config", "started", "provenance", "hparams", "metrics_log", "summary"]
    assert set(document.pop("provenance")) == {"code", "command", "versions", "machine"}
    assert began <= document.pop("started") <= time.time()
    assert document == {
        "experiment_name": "mpo2_experiment_seed0",
        "config": {"model": "MPO2", "L": 3},
        "hparams": {"bond_dim": 6},
        "metrics_log": [
            {"step": -1, "loss": 6.64, "r2": -3.88},
            {"step": 0, "loss": 0.27, "r2": 0.80, "reg_loss": 0.86, "jitter": 0.05},
        ],
        "summary": {"status": "finished", "seed": 0, "loss": 0.27, "r2": 0.80, "success": True},
    }


def test_the_code_that_made_a_run_is_in_its_file_and_the_diff_beside_it(tmp_path):
    commit, diff = run_in_dirty_repository("file", tmp_path / "code")
    provenance = check_provenance("file", "experiment_logs", commit, diff)
    assert provenance["code"]["directory"] == str(tmp_path / "code") and b"not committed" in diff
    files = pathlib.Path("experiment_logs/.artifacts/provenance_kit_seed0")
    assert (files / "git.diff").read_bytes() == diff
    listed = dict(line.split("==") for line in (files / "packages.txt").read_text().splitlines())
    assert listed["numpy"] == np.__version__ and listed["pytest"] == pytest.__version__
    assert provenance["versions"]["trackers"] == {
        "file": f"ntn-tracker-file {importlib.metadata.version('ntn-tracker-file')}"
    }


def test_a_directory_outside_git_is_recorded_as_such(tmp_path):
    from ntn.tracking.provenance import gather

    with start_run("outside_seed0", {}, provenance=gather(tmp_path)):
        pass
    assert load(the_file("outside_seed0"))["provenance"]["code"] == {
        "directory": str(tmp_path),
        "git": "not a git repository",
    }


def test_nonfinite_values_become_null_and_are_named():
    with start_run("nan", {}) as run:
        run.log_metrics({"loss": math.nan, "r2": -math.inf, "reg_loss": math.inf, "jitter": 0.1}, step=2)
        run.log_summary({"loss": math.nan, "success": False})
    raw = strict_json(the_file("nan"))
    assert raw["metrics_log"][0] == {
        "step": 2,
        "loss": None,
        "r2": None,
        "reg_loss": None,
        "jitter": 0.1,
        "nonfinite": {"loss": "NaN", "r2": "-Infinity", "reg_loss": "Infinity"},
    }
    assert raw["summary"]["nonfinite"] == {"loss": "NaN"}
    back = load(the_file("nan"))["metrics_log"][0]
    assert math.isnan(back["loss"]) and back["r2"] == -math.inf and back["reg_loss"] == math.inf


def test_values_json_cannot_hold_are_converted_not_dropped():
    config = {
        "np_float": np.float32(0.5),
        "np_int": np.int64(7),
        "np_array": np.arange(3),
        "tensor": torch.tensor([1.5, 2.5]),
        "scalar_tensor": torch.tensor(3.0),
        "path": pathlib.Path("/data/cal_housing.data"),
        "tuple": (1, (2, 3)),
        "object": object,
    }
    with start_run("types", config) as run:
        run.log_metrics({"loss": np.float64(0.25), "r2": torch.tensor(0.5, dtype=torch.float64)}, step=np.int64(0))
    doc = strict_json(the_file("types"))
    assert doc["config"] == {
        "np_float": 0.5,
        "np_int": 7,
        "np_array": [0, 1, 2],
        "tensor": [1.5, 2.5],
        "scalar_tensor": 3.0,
        "path": "/data/cal_housing.data",
        "tuple": [1, [2, 3]],
        "object": "<class 'object'>",
    }
    assert doc["metrics_log"] == [{"step": 0, "loss": 0.25, "r2": 0.5}]


def test_rerunning_an_experiment_replaces_its_file():
    for loss in (1.0, 2.0):
        with start_run("again", {}) as run:
            run.log_metrics({"loss": loss}, step=0)
    assert load(the_file("again"))["metrics_log"] == [{"step": 0, "loss": 2.0}]


def test_a_rerun_replaces_the_earlier_file_whole():
    with start_run("again", {"note": "x" * 500}) as run:
        run.log_metrics({"loss": 1.0}, step=0)
    with start_run("again", {}) as run:
        assert strict_json(the_file("again"))["summary"] == {"status": "running"}  # the old run is gone
        run.log_metrics({"loss": 2.0}, step=0)
        run.log_summary({"note": "a long note that the next summary shortens"})
        run.log_summary({"note": "short"})
    doc = strict_json(the_file("again"))
    assert doc["config"] == {} and doc["metrics_log"] == [{"step": 0, "loss": 2.0}]
    assert doc["summary"] == {"status": "finished", "note": "short"}


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_run_file_that_is_no_regular_file_is_refused_and_its_target_untouched(kind):
    """Failed on main: a run file that was a symlink had its target outside TRACKER_DIR overwritten."""
    outside = pathlib.Path("outside.txt")
    outside.write_text("precious")
    the_file("linked").parent.mkdir()
    if kind == "symlink":
        the_file("linked").symlink_to(outside.resolve())
    else:
        os.mkfifo(the_file("linked"))
    with pytest.raises(TrackerConfigError) as err:
        with start_run("linked", {}):
            pytest.fail("the run must not start")
    assert "\n" not in str(err.value) and "linked.json" in str(err.value) and "refusing" in str(err.value)
    assert outside.read_text() == "precious"


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched():
    """Failed on main: the experiment's lock file, planted as a symlink, had its target truncated."""
    outside = pathlib.Path("outside.txt")
    outside.write_text("precious")
    logs = pathlib.Path("experiment_logs")
    logs.mkdir()
    with FileTracker.hold_runs(["probe_seed0"]):
        (lock,) = logs.glob(".experiment-*.lock")
    lock.symlink_to(outside.resolve())
    with pytest.raises(TrackerConfigError) as err, FileTracker.hold_runs(["probe_seed0"]):
        pytest.fail("the lock must not be taken")
    assert "is a symbolic link" in str(err.value)
    assert outside.read_text() == "precious"


def test_holding_an_experiment_refuses_a_second_holder_in_one_line():
    with FileTracker.hold_runs(["held_seed0", "held_seed1"]):
        child = subprocess.run(
            [sys.executable, "-c", "from ntn_tracker_file import FileTracker\n"
             "with FileTracker.hold_runs(['held_seed3']): pass"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert child.returncode == 1 and f"is being trained by process {os.getpid()}" in child.stderr
    assert list(pathlib.Path("experiment_logs").glob(".*.lock")) == []  # released and removed


def test_run_files_get_the_mode_any_new_file_gets():
    umask = os.umask(0o022)
    try:
        with start_run("mode", {}) as run:
            run.log_metrics({"loss": 1.0}, step=0)
    finally:
        os.umask(umask)
    assert os.stat(the_file("mode")).st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_the_file_is_complete_after_every_hook_call():
    tracker = FileTracker("live", {"a": 1, "note": "ünï λ"})
    assert strict_json(tracker.path)["summary"] == {"status": "running"}
    tracker.log_hparams({"h": 2})
    assert strict_json(tracker.path)["hparams"] == {"h": 2}
    for step in range(60):
        tracker.log_metrics({"loss": float(step), "note": "x" * 100}, step)
        assert [e["step"] for e in strict_json(tracker.path)["metrics_log"]] == list(range(step + 1))
    tracker.log_summary({"success": True})
    assert strict_json(tracker.path)["summary"] == {"status": "running", "success": True}
    tracker.finalize()
    assert strict_json(tracker.path)["summary"]["status"] == "finished"
    assert strict_json(tracker.path)["config"] == {"a": 1, "note": "ünï λ"}
    assert sorted(p.name for p in tracker.directory.iterdir()) == ["live.json"]  # no temporary files left


CHILD = textwrap.dedent(
    """
    import sys
    from ntn.tracking import start_run
    with start_run(sys.argv[1], {"kind": "crash test"}, backend="file") as run:
        run.log_hparams({"bond_dim": 6})
        step = 0
        while True:
            run.log_metrics({"loss": 1.0 / (step + 1), **{f"m{i}": step + i / 7 for i in range(12)}}, step=step)
            print(step, flush=True)
            step += 1
    """
)


@pytest.mark.parametrize("kill_after", [0, 1, 7, 40, 150, 400])
def test_sigkill_at_any_moment_leaves_a_parsable_file_with_every_returned_step(kill_after):
    child = subprocess.Popen([sys.executable, "-c", CHILD, "killed"], stdout=subprocess.PIPE, text=True)
    acknowledged = -1
    while acknowledged < kill_after:
        acknowledged = int(child.stdout.readline())
    child.kill()  # SIGKILL, while the child keeps writing
    child.wait()
    doc = load(the_file("killed"))
    steps = [entry["step"] for entry in doc["metrics_log"]]
    assert steps == list(range(len(steps)))
    assert len(steps) >= acknowledged + 1
    assert doc["summary"]["status"] == "running"
    assert doc["hparams"] == {"bond_dim": 6}


@pytest.mark.parametrize(
    "name",
    ["a/b", "../../escape", "..", ".", "with space", "nul\x00byte", "/abs/path", "ünï λ", "", "x" * 400, ".hidden"],
)
def test_odd_names_map_to_a_file_inside_the_directory(name):
    with start_run(name, {}) as run:
        run.log_metrics({"loss": 1.0}, step=0)
    files = [f for f in pathlib.Path("experiment_logs").iterdir() if f.name != ".artifacts"]
    assert len(files) == 1 and files[0].suffix == ".json"
    artifacts = sorted(p.name for p in pathlib.Path("experiment_logs/.artifacts").iterdir())
    assert artifacts == [".by-sha256", files[0].stem]  # the run's packages.txt, stored once
    assert files[0].resolve().parent == pathlib.Path("experiment_logs").resolve()
    assert load(files[0])["experiment_name"] == name


def test_different_names_never_share_a_file():
    names = ["a/b", "a_b", "a b", "a\x00b", "a..b", "A_b", "a/b/", "a_b/"]
    assert len({file_stem(n) for n in names}) == len(names)
    # A plain name can spell out another name's hashed file name; that run is refused, never merged.
    lookalike = file_stem("a/b")
    with start_run(lookalike, {}):
        pass
    with pytest.raises(TrackerConfigError, match=r"already holds experiment 'a_b-[0-9a-f]+', not 'a/b'"):
        with start_run("a/b", {}):
            pass
    assert load(the_file(lookalike))["experiment_name"] == lookalike


def test_unwritable_tracker_dir_fails_at_run_start_in_one_line(monkeypatch):
    pathlib.Path("a_file").write_text("not a directory")
    monkeypatch.setenv("TRACKER_DIR", "a_file/logs")
    with pytest.raises(TrackerConfigError) as err:
        with start_run("x", {}):
            pytest.fail("the run must not start")
    assert "\n" not in str(err.value)
    assert "TRACKER_DIR 'a_file/logs' is not a writable directory" in str(err.value)


WRITER = textwrap.dedent(
    """
    import sys
    from ntn.tracking import start_run
    name = sys.argv[1]
    with start_run(name, {"who": name}, backend="file") as run:
        for step in range(300):
            run.log_metrics({"loss": step * 0.5, "who": int(name[-1])}, step=step)  # metrics are numbers
        run.log_summary({"success": True})
    """
)


def test_concurrent_processes_writing_to_one_directory_do_not_corrupt_each_other():
    names = [f"writer{i}" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, n]) for n in names]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    assert sorted(p.name for p in pathlib.Path("experiment_logs").glob("*.json")) == [f"{n}.json" for n in names]
    for n in names:
        doc = strict_json(the_file(n))
        assert doc["config"] == {"who": n}
        assert [e["step"] for e in doc["metrics_log"]] == list(range(300))
        assert all(e["who"] == int(n[-1]) for e in doc["metrics_log"])
        assert doc["summary"] == {"status": "finished", "success": True}


SECRETS = {
    "CF_ACCESS_CLIENT_ID": "cfid-8d7c6b5a4f3e",
    "CF_ACCESS_CLIENT_SECRET": "cfsecret-1a2b3c4d5e6f7a8b",
    "AIM_AUTH_TOKEN": "aimtok-99887766554433",
    "AIM_CUSTOM_HEADERS": json.dumps({"X-Proxy-Auth": "hdrsecret-abcdefgh"}),
}


def test_secret_values_never_reach_the_file(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    config = {"environment": dict(os.environ), "aim_auth_token": SECRETS["AIM_AUTH_TOKEN"]}
    with pytest.raises(RuntimeError), start_run("secrets", config) as run:
        run.log_hparams({"args": config, "cmd": f"--secret={SECRETS['CF_ACCESS_CLIENT_SECRET']}"})
        run.log_metrics({"loss": 1.0}, step=0)
        raise RuntimeError(f"proxy said no to {SECRETS['CF_ACCESS_CLIENT_ID']}")
    for path in (p for p in pathlib.Path("experiment_logs").rglob("*") if p.is_file()):  # artifacts too
        text = path.read_text(encoding="utf-8")
        for value in [*list(SECRETS.values())[:3], "hdrsecret-abcdefgh"]:
            assert value not in text, (path, value)
    assert load(the_file("secrets"))["summary"]["error"] == "RuntimeError: proxy said no to [REDACTED]"


def test_a_flag_or_a_too_short_secret_alters_no_name_key_or_summary(monkeypatch):
    """Failed on main: MY_API_KEY=e put [REDACTED] for every 'e' of the run file's name and keys, so
    `summary` counted the successful run as failed; DISABLE_AUTH=1 renamed seed 1's run file."""
    monkeypatch.setenv("MY_API_KEY", "e")
    monkeypatch.setenv("DISABLE_AUTH", "1")
    with start_run("exp_seed1", {"learning_rate": 0.1, "seed": 1}) as run:
        run.log_metrics({"test_quality": 0.5}, step=0)
        run.log_summary({"success": True, "test_quality": 0.5})
    assert sorted(p.name for p in pathlib.Path("experiment_logs").glob("*.json")) == ["exp_seed1.json"]
    document = load(the_file("exp_seed1"))
    assert document["experiment_name"] == "exp_seed1" and document["config"] == {"learning_rate": 0.1, "seed": 1}
    assert document["summary"] == {"status": "finished", "success": True, "test_quality": 0.5}
    cli = pathlib.Path(sys.executable).parent / "ntn-trackers"
    done = subprocess.run([cli, "summary", "--format", "json"], capture_output=True, text=True, timeout=120)
    (row,) = json.loads(done.stdout)
    assert (row["experiment"], row["runs"], row["successful"], row["failed"]) == ("exp", 1, 1, {}), done.stderr


def test_a_secret_in_the_uncommitted_diff_never_reaches_the_attached_diff(tmp_path, monkeypatch):
    """Failed on main for the tokens no variable holds (an AWS key, a GitHub token): they went into
    git.diff whole, and the record did not say how many lines were redacted."""
    from ntn.tracking.provenance import gather

    monkeypatch.setenv("CF_ACCESS_CLIENT_SECRET", SECRETS["CF_ACCESS_CLIENT_SECRET"])
    aws_key, github_token = "AKIAIOSFODNN7EXAMPLX", "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("SECRET = None\n")
    commit_all(code)
    lines = [f"SECRET = {SECRETS['CF_ACCESS_CLIENT_SECRET']!r}", f"AWS = {aws_key!r}", f"GH = {github_token!r}"]
    (code / "train.py").write_text("\n".join(lines) + "\n")
    with start_run("leaky_seed0", {}, provenance=gather(code)):
        pass
    diff = pathlib.Path("experiment_logs/.artifacts/leaky_seed0/git.diff").read_bytes()
    text = diff.decode()
    assert "+SECRET = '[REDACTED]'" in text and SECRETS["CF_ACCESS_CLIENT_SECRET"] not in text
    assert aws_key not in text and github_token not in text and "-SECRET = None" in text
    recorded = load(the_file("leaky_seed0"))["provenance"]["code"]
    assert recorded["git_diff_redacted_lines"] == 3 == text.count("[REDACTED]")
    assert recorded["git_diff_sha256"] == hashlib.sha256(diff).hexdigest()  # of the diff as attached


def test_load_is_the_public_reader():
    assert ntn_tracker_file.load is load
    with start_run("reader", {}) as run:
        run.log_summary({"success": True})
    assert load(str(the_file("reader")))["summary"]["success"] is True


def test_holding_thousands_of_experiments_at_once():
    """A sweep of many configurations holds one lock per experiment: more than the usual 1024 open files."""
    names = [f"exp{i}_seed0" for i in range(3000)]
    with FileTracker.hold_runs(names):
        assert len(list(pathlib.Path("experiment_logs").glob(".experiment-*.lock"))) == 3000
    assert list(pathlib.Path("experiment_logs").glob(".experiment-*.lock")) == []


PROBE = "probe_seed0"
PLANTED_FILES = {"packages.txt": b"numpy==2.0\n", "git.diff": b"+changed\n"}


VICTIM = pathlib.Path("victim")  # outside TRACKER_DIR


def _victim():
    """Fill VICTIM with files of the names a run writes; a function reading back what it holds."""
    (VICTIM / PROBE).mkdir(parents=True)
    for name in [*PLANTED_FILES, f"{PROBE}.json", "model.pt", f"{PROBE}/packages.txt"]:
        (VICTIM / name).write_bytes(b"precious")
    return lambda: {str(p): p.read_bytes() for p in sorted(VICTIM.rglob("*")) if p.is_file()}


def _plant(where):
    """Make experiment_logs/<where> a symlink to the victim folder (or, for a file, to a file in it)."""
    logs = pathlib.Path("experiment_logs")
    if where == "lock":
        with FileTracker.hold_runs([PROBE]):
            (lock,) = logs.glob(".experiment-*.lock")
        where = lock.name
    if where == "blob":
        where = f".artifacts/.by-sha256/{hashlib.sha256(PLANTED_FILES['packages.txt']).hexdigest()}"
    link = logs / where
    link.parent.mkdir(parents=True, exist_ok=True)
    is_file = where.endswith((".json", ".lock", ".txt", ".diff")) or "by-sha256/" in where
    link.symlink_to(pathlib.Path(VICTIM, "packages.txt" if is_file else PROBE).resolve())
    return link


WHERE = [".artifacts", ".artifacts/.by-sha256", f".artifacts/{PROBE}", f".artifacts/{PROBE}/packages.txt"]
WHERE += [f".artifacts/{PROBE}/git.diff", "blob", f"{PROBE}.json", "lock"]


@pytest.mark.parametrize("where", WHERE)
def test_a_symlink_planted_below_tracker_dir_is_refused_before_any_run_in_one_line(where):
    """Failed on main: .artifacts or .artifacts/<run> as a symlink passed the check and the run wrote its
    files through it, replacing same-named files outside TRACKER_DIR."""
    from ntn.tracking import validate

    content = _victim()
    before = content()
    link = _plant(where)
    with pytest.raises(TrackerConfigError) as err:
        validate("file", [PROBE])
    message = str(err.value)
    assert "\n" not in message and str(link) in message and "symbolic link" in message, message
    assert content() == before


@pytest.mark.parametrize("where", WHERE)
def test_a_run_never_writes_or_reads_through_a_symlink_below_tracker_dir(where):
    """Without the check before it too: each file is opened relative to its directory, never through a link."""
    from ntn.tracking.provenance import Provenance

    content = _victim()
    before = content()
    _plant(where)
    provenance = Provenance({"code": {"git_dirty": True}}, dict(PLANTED_FILES))
    with contextlib.suppress(TrackerConfigError), warnings.catch_warnings(record=True):
        with FileTracker.hold_runs([PROBE]), start_run(PROBE, {}, provenance=provenance) as run:
            run.log_artifact(VICTIM / "model.pt", "model.pt")
    assert content() == before


def test_the_reader_skips_a_run_file_that_is_a_symlink_naming_it():
    from ntn_tracker_file.reading import read_runs

    _victim()
    (VICTIM / "packages.txt").write_text(json.dumps({"experiment_name": "x", "metrics_log": [], "summary": {}}))
    with start_run("kept_seed0", {}):
        pass
    link = _plant(f"{PROBE}.json")
    runs, problems = read_runs("experiment_logs")
    assert [r["experiment_name"] for r in runs] == ["kept_seed0"]
    assert problems == [f"{link}: run file {str(link)!r} is a symbolic link; refusing to read through it"]


def test_a_dirty_tree_s_diff_is_stored_once_for_all_runs_each_referring_to_it(tmp_path):
    """Failed on main: each of the 10 runs kept its own copy of the diff (10x the bytes)."""
    from ntn.tracking.provenance import gather

    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("x = 0\n")
    commit_all(code)
    (code / "train.py").write_text("".join(f"x = {i}  # an uncommitted line of some length\n" for i in range(5000)))
    provenance = gather(code)
    for seed in range(10):
        with start_run(f"dirty_seed{seed}", {}, provenance=provenance):
            pass
    store = pathlib.Path("experiment_logs/.artifacts/.by-sha256")
    stored = {p.name: p.read_bytes() for p in store.iterdir()}
    assert all(hashlib.sha256(data).hexdigest() == name for name, data in stored.items())
    diffs = [pathlib.Path(f"experiment_logs/.artifacts/dirty_seed{seed}/git.diff") for seed in range(10)]
    (diff_name,) = [name for name, data in stored.items() if data == diffs[0].read_bytes()]
    assert len(stored[diff_name]) > 200_000 and len(stored) == 2  # the diff and packages.txt, once each
    for seed, diff in enumerate(diffs):
        assert os.path.samefile(diff, store / diff_name)  # the run's git.diff is the one stored copy
        assert load(the_file(f"dirty_seed{seed}"))["provenance"]["code"]["git_diff_file"] == "git.diff"
    files = {(p.stat().st_ino, p.stat().st_size) for p in pathlib.Path("experiment_logs").rglob("*") if p.is_file()}
    assert sum(size for _, size in files) < 2 * len(stored[diff_name])
