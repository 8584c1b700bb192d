"""ntn-tracker-tensorboard, read back with TensorBoard's own EventAccumulator and a real `tensorboard` server."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from ntn.files import file_stem
from ntn.tracking.testing import (
    END_TIME,
    check_config_error,
    check_provenance,
    check_reader,
    run_conformance,
    run_in_dirty_repository,
)
from ntn_tracker_tensorboard import TensorBoardTracker
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

REPO = Path(__file__).resolve().parents[3]
TENSORBOARD = str(Path(sys.executable).parent / "tensorboard")


@pytest.fixture(autouse=True)
def in_tmp(monkeypatch, tmp_path):
    for name in ("TENSORBOARD_DIR", "TRACKER_BACKEND", "EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def events(run: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run), size_guidance={SCALARS: 0})
    accumulator.Reload()
    return accumulator


def session(run: Path) -> dict[str, HParamsPluginData]:
    """The hparams plugin's summaries of a run: experiment, session start (hparams) and end (status)."""
    content = events(run).PluginTagToContent("hparams")
    return {tag.split("/")[-1]: HParamsPluginData.FromString(data) for tag, data in content.items()}


def test_passes_the_conformance_kit_and_tensorboard_holds_what_it_was_sent(tmp_path):
    sent = run_conformance(TensorBoardTracker)
    record = check_reader("tensorboard", "tb_logs", sent)
    assert record["config"] == json.loads(json.dumps(sent.config))
    assert record["provenance"] == sent.provenance
    (run,) = [
        p.parent
        for p in (tmp_path / "tb_logs").rglob("ntn-run.json")
        if json.loads(p.read_text())["experiment_name"] == sent.experiment_name
    ]
    end = session(run)["session_end_info"].session_end_info
    assert end.status == 2 and end.end_time_secs == END_TIME  # STATUS_FAILURE, at the kit's end time
    name, content = sent.artifact
    assert (run / "artifacts" / file_stem(name)).read_bytes() == content  # a safe file name, as the file backend
    (tmp_path / "file").write_text("not a directory")
    check_config_error("tensorboard", {"TENSORBOARD_DIR": str(tmp_path / "file" / "tb")}, "TENSORBOARD_DIR")


def test_the_code_that_made_a_run_is_in_its_text_tab(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    commit, diff = run_in_dirty_repository("tensorboard", tmp_path / "code")
    check_provenance("tensorboard", "tb_logs", commit, diff)
    (run,) = (tmp_path / "tb_logs").rglob("ntn-run.json")
    assert (run.parent / "artifacts" / "git.diff").read_bytes() == diff
    events = EventAccumulator(str(run.parent), size_guidance={TENSORS: 0})
    events.Reload()
    (text,) = events.Tensors("provenance/text_summary")
    assert f"| code.git_commit | `{commit}` |" in text.tensor_proto.string_val[0].decode()


def test_runs_of_one_dirty_tree_share_one_stored_copy_of_its_diff(tmp_path):
    """Failed on main: each run kept its own copy of the diff."""
    from ntn.tracking import start_run
    from ntn.tracking.provenance import gather

    _, diff = run_in_dirty_repository("tensorboard", tmp_path / "code")
    for seed in range(3):
        with start_run(f"shared_seed{seed}", {}, backend="tensorboard", provenance=gather(tmp_path / "code")):
            pass
    stored = tmp_path / "tb_logs" / ".by-sha256" / hashlib.sha256(diff).hexdigest()
    assert stored.read_bytes() == diff and len(list(stored.parent.iterdir())) == 2  # and packages.txt
    attached = list((tmp_path / "tb_logs").rglob("artifacts/git.diff"))
    assert len(attached) == 4 and all(os.path.samefile(a, stored) for a in attached)


def test_a_run_trained_again_with_its_run_id_replaces_the_earlier_attempt_only(tmp_path):
    def run(run_id: str, loss: float) -> None:
        tracker = TensorBoardTracker("again_seed0", {"experiment": "again", "run_id": run_id})
        tracker.log_metrics({"loss": loss}, 0)
        tracker.finalize("finished", time.time())

    run("again_seed0@a", 1.0)
    run("again_seed0@a", 2.0)
    run("again_seed0@b", 3.0)
    runs = sorted((tmp_path / "tb_logs" / "again").iterdir())
    assert len(runs) == 2
    assert sorted(events(r).Scalars("curves/loss")[0].value for r in runs) == [2.0, 3.0]


def _script(tmp_path: Path, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("TRACKER_BACKEND", "EXPERIMENT_NAME")}
    environ |= {"PYTHON": sys.executable, "DATASET": "synthetic", "N_SAMPLES": "200", "N_EPOCHS": "3"}
    environ |= {"TRACKER_BACKEND": "file,tensorboard"} | env
    return subprocess.run(
        ["bash", str(REPO / "experiments" / script), *args], cwd=tmp_path, env=environ, capture_output=True, text=True
    )


def test_a_script_run_reads_back_through_event_accumulator_and_equals_the_file_tracker(tmp_path):
    done = _script(tmp_path, "run_mpo2.sh", SEEDS="0,1", EXPERIMENT_NAME="tb")
    assert done.returncode == 0, done.stderr
    runs = sorted((tmp_path / "tb_logs" / "tb").iterdir())
    assert [r.name.split("@")[0] for r in runs] == ["tb_seed0", "tb_seed1"]
    for run in runs:
        seed = run.name.split("@")[0]
        written = json.loads((tmp_path / "experiment_logs" / f"{seed}.json").read_text())
        curves = events(run)
        epochs = [m for m in written["metrics_log"] if m["step"] >= 0]
        assert [e.step for e in curves.Scalars("curves/loss")] == [m["step"] for m in epochs] == [0, 1, 2]  # no -1
        for event, entry in zip(curves.Scalars("curves/val_loss"), epochs, strict=True):
            assert event.value == pytest.approx(entry["val_loss"], rel=1e-6)  # float32
        final = curves.Scalars("kept/test_r2")  # at the epoch the run kept
        assert final[0].value == pytest.approx(written["summary"]["test_r2"], rel=1e-6)
        assert [e.step for e in final] == [written["summary"]["best_epoch"]]
        hparams = session(run)
        start = hparams["session_start_info"].session_start_info
        assert start.hparams["bond_dim"].number_value == 6 and start.hparams["status"].string_value == "finished"
        assert start.hparams["dataset"].string_value == "synthetic" and start.hparams["n_samples"].number_value == 200
        assert hparams["session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS
        metrics = [m.name.tag for m in hparams["experiment"].experiment.metric_infos]
        assert "kept/test_r2" in metrics and "kept/train_r2" in metrics and "kept/seed" not in metrics
    summary = subprocess.run(
        [sys.executable, "-m", "ntn.tracking", "summary", "--from", "tensorboard", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    from_files = subprocess.run(
        [sys.executable, "-m", "ntn.tracking", "summary", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    (tb_row,), (file_row,) = json.loads(summary.stdout), json.loads(from_files.stdout)
    assert tb_row["runs"] == file_row["runs"] == 2
    assert tb_row["test_r2"]["mean"] == pytest.approx(file_row["test_r2"]["mean"], rel=1e-9)


SWEEP = """
name = "tbsweep"
model = "mpo2"
seeds = [0, 1]
[settings]
dataset = "synthetic"
n_samples = 200
n_epochs = 2
[grid]
bond_dim = [2, 3]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None, timeout: float = 5.0):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def test_a_sweep_is_one_group_and_a_real_tensorboard_serves_its_scalars_and_hparams(tmp_path):
    (tmp_path / "tbsweep.toml").write_text(SWEEP)
    done = _script(tmp_path, "run_sweep.sh", "tbsweep.toml", "--workers", "2", TRACKER_BACKEND="tensorboard")
    assert done.returncode == 0, done.stderr
    runs = sorted(p.parent.relative_to(tmp_path / "tb_logs") for p in (tmp_path / "tb_logs").rglob("ntn-run.json"))
    assert [r.parts[0] for r in runs] == ["tbsweep"] * 4  # the sweep is one group of TensorBoard runs
    assert sorted(r.parts[1].split("@")[0] for r in runs) == sorted(
        f"tbsweep_bond_dim{b}_seed{s}" for b in (2, 3) for s in (0, 1)
    )
    port = _free_port()
    server = subprocess.Popen(
        [TENSORBOARD, "--logdir", str(tmp_path / "tb_logs"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/data/plugin"
        deadline = time.monotonic() + 60
        while True:
            try:
                tags = _get(f"{base}/scalars/tags")
                if len(tags) == 4:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "tensorboard did not serve the runs"
            time.sleep(0.5)
        assert sorted(tags) == [str(r) for r in runs]
        for run in tags:
            assert {"curves/loss", "curves/val_loss", "kept/test_r2"} <= set(tags[run])
            points = _get(f"{base}/scalars/scalars?run={urllib.parse.quote(run)}&tag=curves/loss")
            assert [p[1] for p in points] == [0, 1]  # (wall time, step, value): from epoch 0
        groups = _get(
            f"{base}/hparams/session_groups",
            {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "colParams": [], "startIndex": 0,
             "sliceSize": 100},
        )  # fmt: skip
        assert len(groups["sessionGroups"]) == 4  # HPARAMS: one row per run
        bond_dims = sorted(g["hparams"]["bond_dim"] for g in groups["sessionGroups"])
        assert bond_dims == [2, 2, 3, 3]
        # failed on main: TensorBoard showed the first five hparams by name, the swept one not among them
        infos = _get(f"{base}/hparams/experiment", {"experimentName": ""})["hparamInfos"]
        assert [(i["name"], i.get("differs", False)) for i in infos][:3] == [
            ("bond_dim", True), ("seed", True), ("status", True)
        ]  # fmt: skip
        assert not any(i.get("differs") for i in infos[3:]) and {"dataset", "n_samples"} <= {i["name"] for i in infos}
    finally:
        server.terminate()
        server.wait(30)


def test_a_pruned_run_ends_unknown_with_its_status_pruned_and_reads_back_pruned(tmp_path):
    from ntn.tracking import start_run
    from ntn.tracking.readers import read_runs
    from tensorboard.plugins.hparams.api_pb2 import Status

    with start_run("trial_seed0", {"experiment": "trial", "sweep": "search"}, backend="tensorboard") as run:
        run.log_metrics({"loss": 1.0}, step=0)
        run.log_summary({"seed": 0, "success": False})
        run.finalize("pruned")
    (record,) = (tmp_path / "tb_logs").rglob("ntn-run.json")
    assert json.loads(record.read_text())["summary"]["status"] == "pruned"
    hparams = session(record.parent)
    assert hparams["session_end_info"].session_end_info.status == Status.Value("STATUS_UNKNOWN")  # not FAILURE
    assert hparams["session_start_info"].session_start_info.hparams["status"].string_value == "pruned"
    records, problems = read_runs("tensorboard", str(tmp_path / "tb_logs"))
    assert problems == [] and [r["summary"]["status"] for r in records] == ["pruned"]
