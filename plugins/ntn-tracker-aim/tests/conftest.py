import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

AIM = str(Path(sys.executable).parent / "aim")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AimServer:
    """A real `aim server` process on 127.0.0.1 serving the repository under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        if not (root / ".aim").is_dir():  # a restarted server serves the repository it had
            subprocess.run([AIM, "init", "--repo", str(root)], check=True, capture_output=True)
        self.port = free_port()
        self.url = f"aim://127.0.0.1:{self.port}"
        self.log = open(root.parent / f"aim-server-{self.port}.log", "w")
        self.process = subprocess.Popen(
            [AIM, "server", "--repo", str(root), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # `aim server` runs uvicorn in a child: stop() signals the whole group
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/status/", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"aim server did not start: {(root.parent / f'aim-server-{self.port}.log').read_text()}")

    def stop(self) -> None:
        """Stop the server and its uvicorn child (SIGINT to the group, SIGKILL if it lingers)."""
        for sig in (signal.SIGINT, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _group_alive(self.process.pid):
                self.process.poll()
                time.sleep(0.1)
            if not _group_alive(self.process.pid):
                break
        self.process.wait()
        self.log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def aim_server(tmp_path_factory):
    """One server per test module (start-up takes seconds); tests use distinct run names."""
    server = AimServer(tmp_path_factory.mktemp("aim") / "server-repo")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("AIM_REPO", "CF_ACCESS_CLIENT_ID", "CF_ACCESS_CLIENT_SECRET", "AIM_AUTH_TOKEN", "AIM_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRACKER_BACKEND", "aim")
    monkeypatch.setenv("NTN_AIM_DELIVERY_INTERVAL", "0")  # deliver at once: tests read back right away
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


def grep_tree(root: Path, needles: list[str]) -> list[tuple[str, str]]:
    """(file, needle) for every needle found in any file under root, binary files included."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [(str(path), n) for n in needles if n.encode() in data]
    return found


__all__ = ["AimServer", "free_port", "grep_tree"]
