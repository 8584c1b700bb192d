"""One test per patch of aim's internals (`ntn_tracker_aim.aim_internals`), each on aim itself, without the tracker.

Through a real `aim server` behind the authenticating proxy, test_aim_remote.py checks the rest:
headers on every HTTP request (test_through_the_proxy_with_the_right_headers), on a WebSocket
reconnection (test_headers_survive_websocket_reconnection), and `wait_until_stored` (every remote test
reads back what was acknowledged).
"""

import time
from importlib.metadata import version

import pytest
from aim import Repo, Run
from aim.ext.transport.client import Client
from ntn_tracker_aim import aim_internals
from ntn_tracker_aim.delivery import RUN_OPTIONS

HASH = "0123456789abcdef01234567"


def test_the_patches_refuse_an_aim_they_were_not_written_for():
    aim_internals.check_version(version("aim"))  # the installed one: the import did the same
    for other in ("3.30.0", "4.0.1", "3.2.9"):
        with pytest.raises(ImportError, match=rf"works with aim 3\.29\.x, not aim {other}"):
            aim_internals.check_version(other)


def test_send_headers_adds_ours_to_every_clients_own_headers():
    aim_internals.send_headers({"X-Proxy-Key": "k1"})
    client = Client.__new__(Client)  # no connection: only the headers it would send
    client.request_headers = {"Own": "1"}  # aim's constructor sets its own this way
    assert client.request_headers == {"Own": "1", "X-Proxy-Key": "k1"}
    aim_internals.send_headers({"X-Proxy-Key": "k2"})  # other credentials: replaced, not added
    assert client.request_headers == {"Own": "1", "X-Proxy-Key": "k2"}
    aim_internals.send_headers({})  # none for the tests after this one
    assert client.request_headers == {"Own": "1"}
    assert Client.refresh_ws is aim_internals._refresh_ws  # reconnects through `ws`, which sends them


def _new_run(created: float | None) -> Run:
    Repo.from_path(".", init=True)
    return aim_internals.new_run(".", HASH, created, experiment="internals", **RUN_OPTIONS)


def test_a_new_run_gets_the_hash_and_creation_time_we_choose_and_aim_is_restored_after():
    created = time.time() - 3600
    run = _new_run(created)
    run.track(1.0, name="loss", step=0)
    aim_internals.close_run(run, None)
    aim_internals.index(Repo("."), [HASH])
    stored = Run(HASH, repo=".", read_only=True)
    assert stored.hash == HASH and stored.creation_time == pytest.approx(created, abs=1e-3)
    other = Run(repo=".", **RUN_OPTIONS)  # aim's own choices again
    assert other.hash != HASH and other.creation_time > created + 3000
    other.close()


def test_close_run_records_when_the_run_ended_not_now():
    created = time.time() - 3600
    run = _new_run(created)
    aim_internals.close_run(run, created + 60)
    aim_internals.index(Repo("."), [HASH])
    assert Run(HASH, repo=".", read_only=True).end_time == pytest.approx(created + 60, abs=1e-3)


def test_index_makes_finished_runs_visible_to_readers():
    aim_internals.close_run(_new_run(None), None)
    assert [r.hash for r in Repo(".").iter_runs()] == []  # what aim 3.29 gives readers without the index
    aim_internals.index(Repo("."), [HASH])
    assert [r.hash for r in Repo(".").iter_runs()] == [HASH]


READ_THEN_WAIT = """
import sys
from ntn_tracker_aim import read_runs
records, problems = read_runs(sys.argv[1])
print(len(records), len(problems), flush=True)
sys.stdin.read()  # the test stops the server meanwhile
"""


def test_run_hashes_lists_every_run_and_leaves_nothing_that_hangs_the_exit(tmp_path):
    """`Repo.list_all_runs` kept the Repo alive until exit, where aim's clean-up, the server gone, hung the
    process for good; `run_hashes` asks the server without that cache."""
    import subprocess
    import sys

    from conftest import AimServer

    server = AimServer(tmp_path / "repo")
    try:
        run = aim_internals.new_run(server.url, HASH, None, experiment="e", **RUN_OPTIONS)
        run.track(1.0, name="loss", step=0)
        aim_internals.close_run(run, None)
        assert aim_internals.run_hashes(Repo.from_path(server.url)) == {HASH}
        reader = subprocess.Popen(
            [sys.executable, "-c", READ_THEN_WAIT, server.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert reader.stdout.readline().split() == ["0", "1"]  # one run, not indexed: counted, not read
    finally:
        server.stop()
    reader.stdin.close()
    assert reader.wait(timeout=60) == 0


def test_clean_up_at_exit_ends_when_a_finalizer_raises():
    """Without the patch, aim's clean-up thread died on the raising finalizer and the exit waited for ever."""
    import subprocess
    import sys

    code = (
        "import ntn_tracker_aim.aim_internals\n"
        "from aim.ext.cleanup import AutoClean\n"
        "class Gone(AutoClean):\n"
        "    def _close(self):\n"
        "        raise ConnectionError('the server has gone')\n"
        "class Resource:\n"
        "    pass\n"
        "resource = Resource()\n"
        "Gone(resource)\n"
        "print('ok', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
