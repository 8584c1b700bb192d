"""The plugin author's guide (docs/writing-a-tracker-plugin.md): its minimal plugin and its test, as written."""

import re
import subprocess
import sys
from pathlib import Path

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
