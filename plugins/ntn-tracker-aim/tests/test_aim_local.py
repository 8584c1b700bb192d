import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from aim import Run
from conftest import grep_tree
from ntn import MPO2, NTN
from ntn.tracking import installed, start_run
from ntn.tracking.readers import read_runs
from ntn.tracking.testing import (
    check_config_error,
    check_provenance,
    check_reader,
    run_conformance,
    run_in_dirty_repository,
)
from ntn_tracker_aim import AimTracker, flush, index_runs, series
from ntn_tracker_aim.reading import HIDDEN


def read(root, run_hash):
    assert flush()
    assert run_hash in index_runs(root)
    return Run(run_hash, repo=str(root), read_only=True)


def test_entry_point_is_installed():
    assert installed()["aim"].value == "ntn_tracker_aim:AimTracker"


def test_passes_the_conformance_kit_and_aim_holds_what_it_was_sent():
    sent = run_conformance(AimTracker)
    run = read(".", sent.tracker.run_hash)
    assert run.name == sent.experiment_name
    assert run.experiment == sent.experiment_name.removesuffix("_seed0")
    hidden = run[HIDDEN]  # out of Aim's tables: failed on main, 118 params led by config.aim_repo
    assert run["hparams"] == sent.hparams and hidden["provenance"] == sent.provenance
    assert hidden["config"]["jitter"] == sent.config["jitter"] and hidden["config"]["seeds"] == [0, 1, 2]
    assert run["summary"] == sent.summary | {"status": "failed"}  # finalize's status
    assert set(run.get(..., {})) == {"hparams", "data", "status", "summary", HIDDEN}
    assert run["status"] == "failed" and "failed" in run.tags and run.description.startswith("failed: ")
    curves = series(run)
    assert hidden["initial"] == {"loss": 6.64, "r2": -3.88} and all(context == "" for _, context in curves)
    loss = curves[("loss", "")]
    assert [s for s, _ in loss] == [0, 1, 2] and loss[0][1] == 0.27 and math.isnan(loss[1][1])
    assert curves[("r2", "")][1] == (1, -math.inf) and curves[("reg_loss", "")][1] == (1, math.inf)
    assert curves[("μ-metric", "")] == [(1, 1.0)]
    assert Path(".aim").is_dir()  # AIM_REPO defaults to ./.aim, created as `aim init` would
    name, content = sent.artifact
    assert list(run.artifacts) == [name]
    assert (Path("aim-artifacts") / run.hash / name).read_bytes() == content  # beside the repository
    check_reader("aim", ".", sent)
    check_config_error("aim", {"AIM_REPO": "aim://no-port"}, "AIM_REPO")


def test_the_code_that_made_a_run_is_in_its_params_and_the_diff_among_its_files(tmp_path):
    commit, diff = run_in_dirty_repository("aim", tmp_path / "code")
    assert flush()
    provenance = check_provenance("aim", ".", commit, diff)
    assert provenance["code"]["git_branch"] in ("main", "master")
    (run,) = [
        r for r in (Run(h, repo=".", read_only=True) for h in index_runs(".")) if r.name == "provenance_kit_seed0"
    ]
    assert Path(run.artifacts["git.diff"].download(str(tmp_path / "got"))).read_bytes() == diff
    assert Path(run.artifacts["packages.txt"].download(str(tmp_path / "got"))).read_text().count("==") > 10


def test_runs_of_one_dirty_tree_refer_to_one_stored_copy_of_its_diff(tmp_path):
    """Failed on main: each run kept its own copy of the diff under aim-artifacts/<run hash>/."""
    from ntn.tracking.provenance import gather

    _, diff = run_in_dirty_repository("aim", tmp_path / "code")
    for seed in range(3):
        with start_run(f"shared_seed{seed}", {}, provenance=gather(tmp_path / "code")):
            pass
    assert flush()
    stored = Path("aim-artifacts", ".by-sha256", hashlib.sha256(diff).hexdigest())
    assert stored.read_bytes() == diff and len(list(stored.parent.iterdir())) == 2  # and packages.txt
    runs = [Run(h, repo=".", read_only=True) for h in index_runs(".")]
    assert len(runs) == 4 and {urlparse(r.artifacts["git.diff"].uri).path for r in runs} == {str(stored.resolve())}
    assert not list(Path("aim-artifacts").rglob("git.diff"))  # no copy in a run's folder


def test_aim_repo_may_be_any_local_path(monkeypatch, tmp_path):
    monkeypatch.setenv("AIM_REPO", str(tmp_path / "elsewhere"))
    with start_run("x_seed0", {}) as tracked:
        tracked.log_metrics({"loss": 1.0}, step=0)
    assert flush()
    assert (tmp_path / "elsewhere" / ".aim").is_dir() and not Path(".aim").exists()
    monkeypatch.setenv("AIM_REPO", str(tmp_path / "named" / ".aim"))
    with start_run("y_seed0", {}):
        pass
    assert flush()
    assert (tmp_path / "named" / ".aim" / "meta").is_dir()
    assert len(index_runs(tmp_path / "elsewhere")) == 1 and len(index_runs(tmp_path / "named")) == 1


def test_an_interrupted_run_is_tagged_and_a_finished_one_is_not():
    for name, body in (("stopped_seed0", KeyboardInterrupt), ("done_seed0", None)):
        with contextlib.suppress(KeyboardInterrupt), start_run(name, {}) as tracked:
            tracked.log_metrics({"loss": 1.0}, step=0)
            if body is not None:
                raise body
    assert flush()
    tags = {r.name: r.tags for r in (Run(h, repo=".", read_only=True) for h in index_runs("."))}
    assert tags == {"stopped_seed0": ["interrupted"], "done_seed0": []}


def test_every_seed_is_a_run_grouped_under_the_experiment_base_name():
    for seed in range(3):
        with start_run(f"bond_sweep_4_seed{seed}", {"experiment": "bond_sweep_4", "seed": seed}) as tracked:
            tracked.log_metrics({"loss": float(seed)}, step=0)
            tracked.log_summary({"seed": seed, "success": True})
    assert flush()
    runs = [Run(h, repo=".", read_only=True) for h in index_runs(".")]
    assert sorted(r.name for r in runs) == [f"bond_sweep_4_seed{s}" for s in range(3)]
    assert {r.experiment for r in runs} == {"bond_sweep_4"}
    for r in runs:
        seed = r["summary"]["seed"]
        assert r.name.endswith(f"seed{seed}") and series(r)[("loss", "")] == [(0, float(seed))]


def test_a_failed_run_records_success_false_and_the_error():
    with pytest.raises(FloatingPointError), start_run("broken_seed1", {}) as tracked:
        tracked.log_metrics({"loss": 3.0}, step=-1)
        raise FloatingPointError("overflow at site 2")
    assert flush()
    (run_hash,) = index_runs(".")
    run = Run(run_hash, repo=".", read_only=True)
    assert run["summary"] == {"status": "failed", "success": False, "error": "FloatingPointError: overflow at site 2"}
    assert run.tags == ["failed"]  # failed on main: only Aim's "Finished" badge showed in the Runs explorer
    assert run["status"] == "failed" and run.description == "failed: FloatingPointError: overflow at site 2"


def test_a_sweep_run_has_the_params_a_researcher_filters_on_and_its_kept_figures_at_the_kept_epoch():
    """Failed on main: test_r2 was a single point at step 0 and the params were the whole config."""
    from aim import Repo

    config = {"experiment": "s_bond_dim4", "sweep": "s", "swept": {"bond_dim": 4}, "dataset": "synthetic"}
    config |= {"n_samples": 200, "aim_repo": ".aim", "tracker_dir": "x", "dataset_info": {"sha256": "0" * 64}}
    with start_run("s_bond_dim4_seed0", config) as tracked:
        for epoch in range(4):
            tracked.log_metrics({"loss": 1.0 / (epoch + 1), "val_r2": 0.1 * epoch}, step=epoch)
        tracked.log_summary({"seed": 0, "best_epoch": 2, "success": True, "r2": 0.8, "val_r2": 0.2, "test_r2": 0.3})
    assert flush()
    (run_hash,) = index_runs(".")
    run = Run(run_hash, repo=".", read_only=True)
    assert set(run.get(..., {})) == {"data", "sweep", "status", "summary", HIDDEN}  # no hparams logged here
    assert run["data"] == {"dataset": "synthetic", "n_samples": 200} and run["status"] == "finished"
    assert run["sweep"] == {"name": "s", "configuration": "s_bond_dim4", "bond_dim": 4} and run.tags == []
    curves = series(run)
    assert curves[("kept/test_r2", "")] == [(2, 0.3)] and curves[("kept/train_r2", "")] == [(2, 0.8)]
    assert ("test_r2", "") not in curves
    for status, names in (("!= 'finished'", []), ("== 'finished'", ["s_bond_dim4_seed0"])):
        query = f"run.experiment == 's' and run.status {status}"  # the experiment: the sweep's name
        assert [r.run.name for r in Repo(os.getcwd()).query_runs(query, report_mode=0).iter_runs()] == names
    (record,) = read_runs("aim", ".")[0]
    assert record["summary"]["test_r2"] == 0.3 and [m["step"] for m in record["metrics_log"]] == [0, 1, 2, 3]


def test_a_script_run_again_is_counted_once_by_summary_its_newest_launch(capsys):
    """Failed before readers gave `started`: Aim keeps both launches' runs of a name (a relaunch has new run ids),
    and `ntn-trackers summary --from aim` counted 4 runs of 2 seeds, each seed twice, the old figures among them."""
    from ntn.tracking.cli import main

    for launch, r2 in (("first", 0.5), ("second", 0.7)):
        for seed in (0, 1):
            with start_run(f"again_seed{seed}", {"run_id": f"again_seed{seed}@{launch}"}, backend="aim") as run:
                run.log_summary({"seed": seed, "success": True, "test_r2": r2 + seed / 10})
    assert flush()
    records, _ = read_runs("aim", ".")
    assert len(records) == 4 and all(r["started"] == pytest.approx(time.time(), abs=600) for r in records)
    assert main(["summary", "--from", "aim:.", "--format", "json"]) == 0
    shown = capsys.readouterr()
    (row,) = json.loads(shown.out)
    assert row["runs"] == row["successful"] == 2 and row["test_r2"]["mean"] == pytest.approx(0.75)
    assert "left out 2 runs of earlier launches" in shown.err


def test_an_aim_run_without_ntn_records_is_a_problem_line_not_an_experiment():
    """Failed before: an Aim run of another program, or one whose delivery was cut before its first record, read
    as an experiment "Run: <hash>" of its own, a failed run in it."""
    with start_run("named_seed0", {"run_id": "named_seed0@1"}, backend="aim") as run:
        run.log_summary({"seed": 0, "success": True})
    assert flush()
    other = Run(repo=".", system_tracking_interval=None, log_system_params=False, capture_terminal_logs=False)
    other.track(1.0, name="loss", step=0)
    other.close()
    records, problems = read_runs("aim", ".")
    assert [r["experiment_name"] for r in records] == ["named_seed0"]
    assert problems == [f". run {other.hash}: no ntn record in it (a run of another program, or one whose delivery "
                        "was cut short: ntn-trackers sync delivers the rest)"]  # fmt: skip


def test_training_callbacks_land_as_metrics_with_step_equal_to_epoch():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(150, 4, generator=g, dtype=torch.float64)
    y = X[:, 0] * X[:, 1] + X[:, 2]
    model = MPO2(L=3, bond_dim=3, phys_dim=5, output_dim=1, output_site=1, seed=0)
    trainer = NTN(model, X[:100], y[:100], X_val=X[100:], y_val=y[100:])
    logged = []
    with start_run("fit_seed0", {"experiment": "fit"}) as tracked:
        trainer.fit(
            3,
            callback_init=lambda s, i: (logged.append((-1, dict(s))), tracked.callback_init(s, i)),
            callback_epoch=lambda e, s, i: (
                logged.append((e, s | {"reg_loss": i["reg_loss"]})),
                tracked.callback_epoch(e, s, i),
            ),
        )
    assert flush()
    (run_hash,) = index_runs(".")
    curves = series(Run(run_hash, repo=".", read_only=True))
    run = Run(run_hash, repo=".", read_only=True)
    for step, scores in logged:
        for name, value in scores.items():
            if step == -1:  # the untrained model: a param, so that no chart or column starts with it
                assert run[HIDDEN]["initial"][name] == pytest.approx(value)
            else:
                assert (step, pytest.approx(value)) in curves[(name, "")]
    assert [s for s, _ in curves[("val_r2", "")]] == [0, 1, 2]


SECRETS = {
    "CF_ACCESS_CLIENT_ID": "cfid-local-5f4e3d2c1b",
    "CF_ACCESS_CLIENT_SECRET": "cfsecret-local-9a8b7c6d5e",
    "AIM_AUTH_TOKEN": "aimtoken-local-1234567890",
    "AIM_CUSTOM_HEADERS": '{"X-Extra": "hdrvalue-local-qazwsx"}',
}


def test_no_secret_reaches_the_local_repository(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(RuntimeError), start_run("secret_seed0", {"env": dict(os.environ)}) as tracked:
        tracked.log_hparams({"token": SECRETS["AIM_AUTH_TOKEN"], "argv": f"--key={SECRETS['CF_ACCESS_CLIENT_SECRET']}"})
        tracked.log_metrics({"loss": 1.0}, step=0)
        raise RuntimeError(f"refused {SECRETS['CF_ACCESS_CLIENT_ID']}")
    assert flush()
    index_runs(".")
    values = [*list(SECRETS.values())[:3], "hdrvalue-local-qazwsx"]
    assert grep_tree(Path(".aim"), values) == [] and grep_tree(Path(".ntn-aim-spool"), values) == []
    runs = [Run(h, repo=".", read_only=True) for h in index_runs(".")]
    assert all("__system_params" not in r.meta_run_tree.keys() for r in runs)


PREPARED = """
import sys, time
from ntn.tracking import prepare, select, start_run
from ntn_tracker_aim import journal, uploads
backends = select("aim")
prepare(backends)
print(*[u.pid for u in uploads.UPLOADS.all_uploaders()], flush=True)
def opened(run_hash):
    from aim import Repo
    try:
        return Repo.from_path(".").run_exists(run_hash)
    except RuntimeError:  # the uploader is still making the repository
        return False

deadline = time.monotonic() + 60
for seed in range(int(sys.argv[1])):
    with start_run(f"early_seed{seed}", {}, backend=backends) as run:
        if seed == 0:  # the run is opened in the repository as it starts, before it has ended
            run_hash = next(journal.spool_dir().glob("*.jsonl")).stem
            while not opened(run_hash) and time.monotonic() < deadline:
                time.sleep(0.05)
            print(opened(run_hash), flush=True)
        run.log_metrics({"loss": 1.0}, step=0)
        run.log_summary({"seed": seed, "success": True})
while list(journal.spool_dir().glob("*.jsonl")) and time.monotonic() < deadline:
    time.sleep(0.05)
print(len(list(journal.spool_dir().glob("*.jsonl"))), flush=True)
"""


def _prepared(runs: int) -> list[str]:
    environ = dict(os.environ, NTN_AIM_DELIVERY_INTERVAL="3600")  # no delivery round would come in time
    done = subprocess.run([sys.executable, "-c", PREPARED, str(runs)], env=environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n")


def test_a_prepared_process_opens_each_run_as_it_starts_delivers_it_as_it_ends_and_ends_an_unused_uploader():
    uploader, opened_while_training, left, _ = _prepared(2)
    assert opened_while_training == "True"
    assert left == "0"  # both delivered while the process still ran, not after the 3600 s interval or at exit
    runs, problems = read_runs("aim", ".")
    assert problems == [] and sorted(r["experiment_name"] for r in runs) == ["early_seed0", "early_seed1"]
    assert _gone(int(uploader))
    uploader, left, _ = _prepared(0)  # prepared, then no run (bad input found after the check)
    assert left == "0" and _gone(int(uploader))  # ended with its process, not left importing aim


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_run_trained_again_with_its_run_id_replaces_its_earlier_attempt():
    """A sweep's retry (config["run_id"]) continues the Aim run of the attempt whose process died."""
    config = {"experiment": "sweep_a", "run_id": "sweep_a_seed0"}
    killed = AimTracker("sweep_a_seed0", config)
    killed.log_metrics({"loss": 9.0, "r2": -1.0}, step=0)
    killed.log_summary({"seed": 0, "status": "running", "error": "left by the dead attempt"})
    os.close(killed.journal._fd)  # the process died here: no finalize, its journal's lock released
    with start_run("sweep_a_seed0", config) as tracked:
        for step in range(2):
            tracked.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        tracked.log_summary({"seed": 0, "success": True})
    others = [AimTracker("sweep_a_seed1", config | {"run_id": "sweep_a_seed1"}), AimTracker("x_seed0", {})]
    assert all(other.run_hash != killed.run_hash for other in others)
    for other in others:
        other.finalize()
    run = read(".", killed.run_hash)
    assert [Run(h, repo=".", read_only=True).name for h in index_runs(".")].count("sweep_a_seed0") == 1
    assert run["summary"] == {"seed": 0, "success": True, "status": "finished"}  # nothing of the dead attempt
    assert series(run)[("loss", "")] == [(0, 1.0), (1, 0.5)] and not run.active


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "soon"])
def test_a_timeout_that_is_not_a_number_of_seconds_is_one_line(tmp_path, value):
    """Failed on main: NTN_AIM_EXIT_TIMEOUT=inf and `sync --timeout inf` ended in tracebacks."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ntn.tracking", "sync", "--timeout", value, "--spool", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"--timeout={value!r} must be a number of seconds" in done.stderr
    from ntn.tracking import TrackerConfigError

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NTN_AIM_DELIVERY_INTERVAL", value)
        with pytest.raises(TrackerConfigError, match="NTN_AIM_DELIVERY_INTERVAL="):
            AimTracker.check_environment()


def test_a_pruned_run_is_tagged_pruned_and_reads_back_pruned():
    with start_run("trial_seed0", {"experiment": "trial", "sweep": "search"}) as tracked:
        tracked.log_metrics({"loss": 1.0}, step=0)
        tracked.log_summary({"seed": 0, "success": False})
        tracked.finalize("pruned")
    assert flush()
    (run,) = (Run(h, repo=".", read_only=True) for h in index_runs("."))
    assert run.tags == ["pruned"]
    records, problems = read_runs("aim", ".")
    assert problems == [] and [r["summary"]["status"] for r in records] == ["pruned"]
