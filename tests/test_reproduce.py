"""Which code, data and machine made a run, and `ntn-trackers reproduce` (docs/tracking.md: Provenance)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ntn.tracking.cli import main as trackers
from ntn.tracking.readers import read_runs
from ntn.tracking.reproduce import CannotReproduce, find
from ntn.tracking.testing import commit_all, git

REPO = Path(__file__).resolve().parents[1]
TRACKERS = str(Path(sys.executable).parent / "ntn-trackers")
SMALL = {"DATASET": "synthetic", "N_SAMPLES": "200", "SEEDS": "0", "N_EPOCHS": "2"}


@pytest.fixture
def checkout(tmp_path):
    """A git repository holding a copy of the experiments, committed, then one file changed (uncommitted)."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "experiments", root / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    commit_all(root)
    with open(root / "experiments" / "train.py", "a") as f:
        f.write("# an uncommitted change\n")
    return root


def in_checkout(checkout: Path, *command: str, **env: str) -> subprocess.CompletedProcess:
    ours = ("TRACKER_BACKEND", "EXPERIMENT_NAME", "SEEDS", "TRACKER_DIR", "PYTHONPATH")
    # the packages' sources as given (`env`'s first), but never this repository's experiments: the checkout's are run
    given = [env.pop("PYTHONPATH")] if "PYTHONPATH" in env else []
    paths = given + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    environ = (
        {k: v for k, v in os.environ.items() if k not in ours} | SMALL | env | {"PYTHONPATH": os.pathsep.join(paths)}
    )
    return subprocess.run(list(command), cwd=checkout, env=environ, capture_output=True, text=True, timeout=600)


def test_a_checkout_whose_core_is_not_the_ntn_imported_is_refused_and_its_advice_reproduces(checkout):
    """Failed before: reproduce, run from the recorded commit's worktree as it advised, re-trained with the ntn this
    Python imports (another checkout's, or an installed copy), and said the run did not reproduce."""
    import ntn

    trained = in_checkout(checkout, sys.executable, "-m", "experiments.train", "mpo2", TRACKER_BACKEND="file")
    assert trained.returncode == 0, trained.stderr
    core = checkout / "core" / "src"
    shutil.copytree(Path(ntn.__file__).resolve().parent, core / "ntn", ignore=shutil.ignore_patterns("__pycache__"))
    with open(core / "ntn" / "trainer.py", "a") as f:
        f.write("# this checkout's own change\n")
    refused = in_checkout(checkout, TRACKERS, "reproduce", "mpo2_experiment_seed0")
    assert refused.returncode == 2 and "reproduced" not in refused.stdout, refused.stdout + refused.stderr
    advice = f"run it with the checkout's: PYTHONPATH={core} ntn-trackers reproduce mpo2_experiment_seed0 --dir "
    assert "(it differs in core/src/ntn/trainer.py); " + advice in refused.stderr, refused.stderr
    followed = in_checkout(checkout, TRACKERS, "reproduce", "mpo2_experiment_seed0", PYTHONPATH=str(core))
    assert followed.returncode == 0 and "reproduced: all 7 figures identical" in followed.stdout, followed.stderr


def test_a_run_records_its_code_and_reproduces_identically_from_a_dirty_checkout(checkout):
    aim = str(checkout.parent / "aim")
    trained = in_checkout(
        checkout, sys.executable, "-m", "experiments.train", "mpo2", TRACKER_BACKEND="file,aim", AIM_REPO=aim
    )
    assert trained.returncode == 0, trained.stderr
    record = json.loads((checkout / "experiment_logs" / "mpo2_experiment_seed0.json").read_text())
    provenance = record["provenance"]
    (in_aim,) = read_runs("aim", aim)[0]
    assert in_aim["provenance"] == provenance  # the same record in both backends
    diff = git(checkout, "diff", "HEAD", "--binary")
    assert provenance["code"]["git_commit"] == git(checkout, "rev-parse", "HEAD").decode().strip()
    assert (
        provenance["code"]["git_dirty"] is True
        and provenance["code"]["git_branch"] == git(checkout, "branch", "--show-current").decode().strip()
    )
    assert (checkout / "experiment_logs" / ".artifacts" / "mpo2_experiment_seed0" / "git.diff").read_bytes() == diff
    assert provenance["command"]["argv"] == ["python", "-m", "experiments.train", "mpo2"]
    assert provenance["command"]["settings_from_environment"] == SMALL | {
        "TRACKER_BACKEND": "file,aim",
        "AIM_REPO": aim,
    }
    assert provenance["data"]["name"] == "synthetic" and len(provenance["data"]["sha256"]) == 64
    assert provenance["machine"]["device"] == "cpu" and provenance["machine"]["cores"] == os.cpu_count()

    again = in_checkout(checkout, TRACKERS, "reproduce", "mpo2_experiment_seed0", "--from", f"aim:{aim}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "same code, packages, data and device" in again.stdout
    assert again.stdout.rstrip().endswith("reproduced: all 7 figures identical")
    figures = {line.split()[0] for line in again.stdout.splitlines() if line.startswith(("train_", "val_", "test_"))}
    assert {"train_loss", "train_r2", "val_r2", "test_r2"} <= figures  # named as summary names them

    # a setting's default changed since: the record holds the value the run used, so the figures come back
    settings = checkout / "experiments" / "settings.py"
    settings.write_text(
        settings.read_text().replace('setting("10", integer(0), "sweeps', 'setting("3", integer(0), "sweeps')
    )
    refused = in_checkout(checkout, TRACKERS, "reproduce", "mpo2_experiment_seed0")
    commit = provenance["code"]["git_commit"]
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert (
        f"it was trained with other code; to get that code: git worktree add ../ntn-{commit[:12]} {commit}, then its "
        f"uncommitted changes: git -C ../ntn-{commit[:12]} apply <the run's git.diff>" in refused.stderr
    )
    assert "reproduced" not in refused.stdout  # nothing re-trained
    changed = in_checkout(checkout, TRACKERS, "reproduce", "mpo2_experiment_seed0", "--with-this-checkout")
    (line,) = [line for line in changed.stdout.splitlines() if "differs:" in line]
    assert "code: uncommitted changes (diff SHA-256" in line and "recorded, uncommitted changes" in line
    assert changed.returncode == 0 and "all 7 figures identical" in changed.stdout


@pytest.fixture
def recorded(train_here, tmp_path):
    """One run trained in this process; (its run file, its record) to change and reproduce."""
    code, _, err = train_here("mpo2", **SMALL)
    assert code == 0, err
    path = tmp_path / "experiment_logs" / "mpo2_experiment_seed0.json"
    return path, json.loads(path.read_text())


def reproduce(capsys, *arguments):
    capsys.readouterr()
    code = trackers(["reproduce", "mpo2_experiment_seed0", *arguments])
    out, err = capsys.readouterr()
    return code, out, err


def changed(path, record, change):
    change(record)
    path.write_text(json.dumps(record))


def test_another_package_version_is_one_line_and_the_figures_still_agree(recorded, capsys):
    path, record = recorded
    changed(path, record, lambda r: r["provenance"]["versions"].update(torch="2.0.0"))
    code, out, _ = reproduce(capsys)
    differs = [line for line in out.splitlines() if "differs:" in line]
    assert differs == [f"  differs: versions: torch 2.0.0 recorded, {torch.__version__} now"]
    assert code == 0 and "all 7 figures identical" in out


def test_a_setting_missing_from_the_record_takes_its_default_says_so_and_the_figures_differ(recorded, capsys):
    path, record = recorded
    changed(path, record, lambda r: r["config"].pop("n_epochs"))  # as a record made before N_EPOCHS existed
    code, out, _ = reproduce(capsys)
    assert "  differs: settings: N_EPOCHS is not in the record (added since); its default 10 is used" in out
    assert code == 1 and "not reproduced:" in out.splitlines()[-1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["config"].update(model="XYZ"), "unknown model 'XYZ' (known: mpo2, lmpo2, mmpo2)"),
        (lambda r: r.pop("provenance"), "its record holds no provenance"),
        (
            lambda r: r["provenance"]["command"].update(reproduce_with="no_such_module"),
            "it was recorded by 'no_such_module', not experiments.train",
        ),
        (lambda r: r["config"].update(bond_dim=0), "BOND_DIM='0' must be an integer >= 1"),
    ],
)
def test_a_record_that_cannot_be_reproduced_is_one_line_and_exit_2(recorded, capsys, change, message):
    path, record = recorded
    changed(path, record, change)
    code, out, err = reproduce(capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("ntn-trackers reproduce: cannot reproduce mpo2_experiment_seed0: ") and message in err


def test_a_run_that_is_not_recorded_is_one_line_and_exit_2(recorded, capsys):
    capsys.readouterr()
    assert trackers(["reproduce", "no_such_run"]) == 2
    assert (
        capsys.readouterr().err
        == "ntn-trackers reproduce: cannot reproduce no_such_run: no recorded run is named 'no_such_run'\n"
    )


@pytest.mark.skipif(not os.environ.get("NTN_DATA_DIR"), reason="needs NTN_DATA_DIR with cal_housing.data")
def test_a_changed_data_file_is_one_line_and_exit_1_and_a_missing_one_exit_2(train_here, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(Path(os.environ["NTN_DATA_DIR"]) / "cal_housing.data", data)
    code, _, err = train_here("mpo2", **(SMALL | {"DATASET": "california_housing", "NTN_DATA_DIR": str(data)}))
    assert code == 0, err
    rows = (data / "cal_housing.data").read_text().splitlines()
    (data / "cal_housing.data").write_text("\n".join(reversed(rows)) + "\n")  # the same rows, in another order
    code, out, err = reproduce(capsys)
    (line,) = [line for line in out.splitlines() if "differs:" in line] or [err]
    assert line.startswith("  differs: data: california_housing SHA-256 ") and str(data) in line
    assert code == 1
    (data / "cal_housing.data").unlink()
    code, out, err = reproduce(capsys)
    assert code == 2 and "has no cal_housing.data" in err and err.count("\n") == 1


def test_a_module_or_path_named_by_a_record_is_never_imported(recorded, capsys, tmp_path):
    """Failed on main: the module the record named was imported from the path it named (a planted run file
    ran its code as whoever reproduced it)."""
    planted = tmp_path / "planted"
    planted.mkdir()
    ran = tmp_path / "planted_code_ran"
    (planted / "planted_module.py").write_text(f"open({str(ran)!r}, 'w').close()\ndef prepare_reproduction(r, d): 0\n")
    path, record = recorded
    command = {"reproduce_with": "planted_module", "reproduce_path": str(planted)}
    changed(path, record, lambda r: r["provenance"]["command"].update(command))
    code, out, err = reproduce(capsys)
    try:
        assert code == 2 and out == "" and err.count("\n") == 1
        assert "it was recorded by 'planted_module', not experiments.train" in err
        assert not ran.exists() and "planted_module" not in sys.modules
    finally:
        sys.modules.pop("planted_module", None)


def test_a_run_of_another_commit_says_how_to_get_its_code_and_retrains_only_on_request(recorded, capsys):
    """Failed on main: a run of other code was re-trained with this checkout's, without being asked."""
    path, record = recorded
    other = "0123456789abcdef0123456789abcdef01234567"
    changed(path, record, lambda r: r["provenance"]["code"].update(git_commit=other, git_dirty=False))
    code, out, err = reproduce(capsys)
    assert code == 2 and err.count("\n") == 1 and "reproduced" not in out
    assert f"  differs: code: commit {other} recorded" in out
    rerun = f"ntn-trackers reproduce mpo2_experiment_seed0 --dir {os.path.abspath('experiment_logs')}"
    assert (
        f"to get that code: git worktree add ../ntn-0123456789ab {other}; then, from ../ntn-0123456789ab: "
        f"PYTHONPATH=core/src {rerun};" in err
    )
    assert "or re-train it with this checkout's code: --with-this-checkout" in err
    code, out, err = reproduce(capsys, "--with-this-checkout")
    assert code == 0 and out.rstrip().endswith("reproduced: all 7 figures identical"), out + err


def test_the_command_to_run_elsewhere_names_every_source_absolutely(tmp_path, monkeypatch):
    """Failed before: `--from file` (a backend's default location) was repeated as it was, and read nothing from the
    recorded commit's worktree."""
    import argparse

    from ntn.tracking.reproduce import _rerun

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRACKER_DIR", raising=False)
    args = argparse.Namespace(
        run="x_seed0", sources=["file", "file:logs b", "aim:aim://h:53800"], dir=None, device=None
    )
    assert _rerun(args) == (
        f"ntn-trackers reproduce x_seed0 --from file:{tmp_path}/experiment_logs --from 'file:{tmp_path}/logs b' "
        "--from aim:aim://h:53800"
    )


def test_a_commit_that_is_no_commit_is_never_shown_as_a_command(recorded, capsys):
    path, record = recorded
    changed(path, record, lambda r: r["provenance"]["code"].update(git_commit="x; rm -rf ~"))
    code, _, err = reproduce(capsys)
    assert code == 2 and "its record names no git commit: its code cannot be checked out" in err
    assert "rm -rf" not in err.split("differs")[0] and "git worktree" not in err


def test_a_record_too_large_to_train_here_is_one_line_and_exit_2(recorded, capsys):
    """Failed on main: a 32-line traceback."""
    path, record = recorded
    changed(path, record, lambda r: r["config"].update(bond_dim=10**6))
    code, out, err = reproduce(capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in out + err
    assert "cannot reproduce mpo2_experiment_seed0: re-training failed: RuntimeError: " in err
    assert "can't allocate memory" in err


def test_a_name_that_several_runs_share_lists_an_id_that_names_each():
    """Failed before: runs recorded by a backend with no id of its own (the file backend, a third party's that keys
    its records by run_id) were listed as None."""
    records = [{"experiment_name": "x_seed0", "config": {"run_id": f"launch{i}"}} for i in range(2)]
    started = time.mktime((2026, 12, 6, 9, 30, 5, 0, 0, -1))  # the local time the id is listed with
    records.append(
        {"experiment_name": "x_seed0", "config": {"run_id": "launch2"}, "aim": {"hash": "0a1b"}, "started": started}
    )
    with pytest.raises(CannotReproduce) as refused:
        find(list(records), "x_seed0")
    assert str(refused.value) == (
        "3 recorded runs are named 'x_seed0', newest first; give one of their ids: 0a1b (started 2026-12-06 09:30:05), "
        "launch0, launch1"
    )
    assert [find(records, run_id) for run_id in ("launch0", "launch1", "0a1b")] == records
    with pytest.raises(CannotReproduce, match=r"^no recorded run is named 'x'; its runs: x_seed0$"):
        find(records, "x")  # an experiment's name: its runs named (failed on main: not them)
    others = [{"experiment_name": f"x_y_seed{i}", "config": {"experiment": "x_y"}} for i in range(12)]
    with pytest.raises(CannotReproduce, match=r"its runs: x_seed0$"):  # not another experiment's that starts so
        find(records + others, "x")
    with pytest.raises(CannotReproduce, match=r"its runs: x_y_seed0, x_y_seed1, x_y_seed10, .*x_y_seed7 and 2 more$"):
        find(others, "x_y")


def test_names_read_from_records_reach_the_terminal_inert(recorded, capsys):
    """Failed before: a record's name with escape sequences was printed as is (it could clear the screen)."""
    path, record = recorded
    renamed = {"experiment_name": "evil\x1b[2J_seed0", "config": record["config"] | {"experiment": "evil"}}
    changed(path, record, lambda r: r.update(renamed))
    capsys.readouterr()
    assert trackers(["reproduce", "evil"]) == 2
    assert capsys.readouterr().err == (
        "ntn-trackers reproduce: cannot reproduce evil: no recorded run is named 'evil'; its runs: evil\\x1b[2J_seed0\n"
    )
