import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# the settings a test gives itself: a value in the environment of whoever runs the tests is not inherited
SETTINGS_OF_TESTS = (
    "TRACKER_BACKEND",
    "EXPERIMENT_NAME",
    "SEEDS",
    "WORKERS",
    "AIM_REPO",
    "TRACKER_DIR",
    "AIM_CUSTOM_HEADERS",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`slow`: the tests that start the scripts or a cluster (the others run in this process, in ms to s)."""
    for item in items:
        if {"run_script", "cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def run_script(tmp_path):
    """Run experiments/run_<model>.sh as a user would, from a scratch working directory."""

    def run(model="mpo2", *args, **env):
        environ = {k: v for k, v in os.environ.items() if k not in SETTINGS_OF_TESTS}
        environ |= {"PYTHON": sys.executable, "DATASET": "synthetic", "N_SAMPLES": "300", "SEEDS": "0,1"}
        environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), environ.get("PATH", "")])  # venv active
        environ |= {k: str(v) for k, v in env.items()}
        return subprocess.run(
            ["bash", str(REPO / "experiments" / f"run_{model}.sh"), *args],
            cwd=tmp_path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=600,
        )

    return run


def _in_process(main, monkeypatch, capsys, model=None):
    """A call of an entry point `main(argv)` with environment variables set for the test; returns (exit
    code, stdout, stderr). The signal handlers it installs are put back."""
    import signal

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def run(*args, **env):
        for name, value in env.items():
            monkeypatch.setenv(name, str(value))
        capsys.readouterr()
        try:
            code = main([*([model] if model else []), *args])
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def train_here(tmp_path, monkeypatch, capsys):
    """Run `run_<model>.sh`'s Python entry point in this process (no torch import per case), from a scratch
    working directory, with the tests' small defaults; returns (exit code, stdout, stderr)."""
    from experiments.train import main

    monkeypatch.chdir(tmp_path)
    for name in SETTINGS_OF_TESTS:
        monkeypatch.delenv(name, raising=False)

    def run(model="mpo2", *args, **env):
        defaults = {"DATASET": "synthetic", "N_SAMPLES": "300", "SEEDS": "0,1"}
        return _in_process(main, monkeypatch, capsys, model)(*args, **(defaults | env))

    return run


@pytest.fixture
def sweep_here(tmp_path, monkeypatch, capsys):
    """`run_sweep.sh`'s Python entry point in this process, from a scratch working directory, for the cases
    that stop before any worker starts; returns (exit code, stdout, stderr)."""
    from experiments.sweep import main

    monkeypatch.chdir(tmp_path)
    for name in ("TRACKER_BACKEND", "AIM_REPO", "TRACKER_DIR", "SWEEP_EXECUTOR", "DASK_SCHEDULER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return _in_process(main, monkeypatch, capsys)
