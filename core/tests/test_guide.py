"""The plugin author's guide (docs/writing-a-tracker-plugin.md): its minimal plugin and its test, as written."""

import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "writing-a-tracker-plugin.md"


def _block_after(text: str, marker: str) -> str:
    """The first ```python block after `marker`."""
    return re.search(r"```python\n(.*?)```", text[text.index(marker) :], re.S).group(1)


def test_the_guide_s_minimal_plugin_passes_the_guide_s_own_test(tmp_path):
    text = GUIDE.read_text(encoding="utf-8")
    package = tmp_path / "src" / "ntn_tracker_stdout"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(_block_after(text, "`src/ntn_tracker_stdout/__init__.py`:"))
    (tmp_path / "test_stdout.py").write_text(_block_after(text, "## Testing it"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_stdout.py")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


class _ServerRun:
    """What the guide's `ServerRun` stands for: a run on a server, here a list of the calls it got."""

    calls: ClassVar[list] = []

    def __init__(self, experiment_name, config):
        self.name = experiment_name
        self.calls.append((experiment_name, "__init__"))

    def log_metrics(self, metrics, step):
        self.calls.append((self.name, "log_metrics", step))

    def finalize(self, status, end_time):
        self.calls.append((self.name, "finalize", status, end_time))


class _ServerClient:
    """What the guide's `ServerClient` stands for: one finished run on a server."""

    def __init__(self, source):
        self.source = source

    def ping(self):
        return True

    def runs(self):
        run = type("Run", (), {})()
        run.name, run.config, run.hparams = "exp_seed0", {"experiment": "exp"}, {"bond_dim": 6}
        run.metrics_by_step = lambda: [(-1, {"loss": 2.0}), (0, {"loss": 1.0})]
        run.summary, run.status = {"seed": 0, "success": True, "best_epoch": 0}, "finished"
        return [run]


def test_the_guide_s_server_examples_run_as_written():
    import argparse

    from ntn.tracking.readers import problem_of
    from ntn.tracking.testing import END_TIME, run_conformance, run_name

    text = GUIDE.read_text(encoding="utf-8")
    namespace = {"ServerRun": _ServerRun, "ServerClient": _ServerClient}
    exec(_block_after(text, "## Talking to a server"), namespace)
    _ServerRun.calls.clear()
    sent = run_conformance(namespace["ServerTracker"])
    names = [sent.experiment_name, sent.second.experiment_name, run_name(sent.experiment_name, 2)]
    first, second, third = ([call[1:] for call in _ServerRun.calls if call[0] == name] for name in names)
    assert [c[1] for c in first if c[0] == "log_metrics"] == [-1, 0, 1, 2]  # each run's calls on its own thread
    assert first[-1] == ("finalize", "failed", END_TIME) and second[-1] == ("finalize", "finished", END_TIME + 1)
    assert third[0] == ("__init__",) and third[-1][:2] == ("finalize", "failed")

    exec(_block_after(text, "## Reading runs back, and commands"), namespace)
    records, problems = namespace["read_runs"]("https://host")
    assert problems == [] and [problem_of(r) for r in records] == [None]
    assert records[0]["metrics_log"] == [{"step": -1, "loss": 2.0}, {"step": 0, "loss": 1.0}]

    exec(_block_after(text, "A plugin adds its own subcommands"), namespace)
    parser = argparse.ArgumentParser()
    namespace["register"](parser.add_subparsers())
    args = parser.parse_args(["server-check", "https://host"])
    assert args.func(args) == 0
