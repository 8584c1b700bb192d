import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def run_script(tmp_path):
    """Run experiments/run_<model>.sh as a user would, from a scratch working directory."""

    def run(model="mpo2", *args, **env):
        ours = ("TRACKER_BACKEND", "EXPERIMENT_NAME", "SEEDS", "AIM_REPO", "TRACKER_DIR", "AIM_CUSTOM_HEADERS")
        environ = {k: v for k, v in os.environ.items() if k not in ours}
        environ |= {"PYTHON": sys.executable, "DATASET": "synthetic", "N_SAMPLES": "300", "SEEDS": "0,1"}
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
