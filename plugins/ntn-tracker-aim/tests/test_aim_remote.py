import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from aim import Run
from authproxy import AuthProxy
from conftest import AimServer, free_port, grep_tree
from ntn.tracking import TrackerConfigError, start_run
from ntn_tracker_aim import flush, index_runs, read_runs, series, uploads
from ntn_tracker_aim.auth import headers_from_env
from ntn_tracker_aim.journal import read_records
from ntn_tracker_aim.reading import HIDDEN
from ntn_tracker_aim.tracker import AimTracker

CF = {"CF_ACCESS_CLIENT_ID": "cf-id-remote-7h6g5f4e", "CF_ACCESS_CLIENT_SECRET": "cf-secret-remote-3d2c1b0a9z"}
CF_HEADERS = {
    "CF-Access-Client-Id": CF["CF_ACCESS_CLIENT_ID"],
    "CF-Access-Client-Secret": CF["CF_ACCESS_CLIENT_SECRET"],
}


def log_a_run(name, steps=4, summary=True):
    with start_run(name, {"experiment": name.rsplit("_seed", 1)[0]}) as tracked:
        tracked.log_hparams({"bond_dim": 6})
        tracked.log_metrics({"loss": 9.0}, step=-1)
        for step in range(steps):
            tracked.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        if summary:
            tracked.log_summary({"success": True})


def server_runs(server):
    assert flush()
    return {r.name: r for r in (Run(h, repo=str(server.root), read_only=True) for h in index_runs(server.root))}


def test_runs_land_in_the_remote_servers_repository(aim_server, monkeypatch):
    monkeypatch.setenv("AIM_REPO", aim_server.url)
    for seed in range(2):
        log_a_run(f"remote_seed{seed}")
    runs = server_runs(aim_server)
    assert sorted(runs) == ["remote_seed0", "remote_seed1"]
    for run in runs.values():
        assert run.experiment == "remote" and run["hparams"] == {"bond_dim": 6}
        assert run["summary"] == {"success": True, "status": "finished"}
        assert series(run)[("loss", "")] == [(s, 1.0 / (s + 1)) for s in range(4)]
        assert run[HIDDEN]["initial"] == {"loss": 9.0}  # out of the tables, on a server too
    assert not Path(".aim").exists()  # nothing local


@pytest.fixture
def proxy(aim_server):
    p = AuthProxy(aim_server.port, CF_HEADERS)
    yield p
    p.close()


@pytest.mark.parametrize(
    "env",
    [
        CF,
        {"AIM_AUTH_TOKEN": "tok-remote-0a9b8c7d6e"},
        {"AIM_CUSTOM_HEADERS": json.dumps({"X-Proxy-Key": "custom-remote-4r5t6y7u"})},
    ],
    ids=["cloudflare", "bearer", "custom"],
)
def test_through_the_proxy_with_the_right_headers(aim_server, monkeypatch, env):
    required = headers_from_env(env)
    proxy = AuthProxy(aim_server.port, required)
    try:
        monkeypatch.setenv("AIM_REPO", f"aim://127.0.0.1:{proxy.port}")
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        log_a_run("proxied_seed0")
        assert flush()
        assert proxy.refused == {"http": 0, "websocket": 0}
        assert proxy.accepted["http"] > 0 and proxy.accepted["websocket"] >= 1
    finally:
        proxy.close()
    run = server_runs(aim_server)["proxied_seed0"]
    assert series(run)[("loss", "")] == [(s, 1.0 / (s + 1)) for s in range(4)]
    secrets = [v for v in env.values() if not v.startswith("{")] + [v for v in required.values()]
    assert grep_tree(aim_server.root, secrets) == []


def answered_after_prepare() -> None:
    """What the scripts do before they import torch (`AimTracker.prepare`), then wait for the server's
    answer, which a script's start-up gives time for (the test does not assume a speed)."""
    AimTracker.prepare()
    uploads.UPLOADS.probes[uploads.key_of(os.environ["AIM_REPO"])].result(timeout=30)


def test_without_the_headers_the_run_is_refused_in_one_line_before_training(proxy, monkeypatch):
    monkeypatch.setenv("AIM_REPO", f"aim://127.0.0.1:{proxy.port}")
    answered_after_prepare()
    with pytest.raises(TrackerConfigError) as err:
        with start_run("refused_seed0", {}):
            pytest.fail("the run must not start")
    assert str(err.value).startswith(f"Aim server at aim://127.0.0.1:{proxy.port} refused the credentials (HTTP 403)")
    assert "\n" not in str(err.value)
    monkeypatch.setenv("CF_ACCESS_CLIENT_ID", CF["CF_ACCESS_CLIENT_ID"])
    monkeypatch.setenv("CF_ACCESS_CLIENT_SECRET", "wrong-secret-value")
    answered_after_prepare()  # other credentials: asked again
    with pytest.raises(TrackerConfigError, match=r"refused the credentials \(HTTP 403\)"):
        with start_run("wrong_seed0", {}):
            pytest.fail("the run must not start")
    assert not list(Path(".ntn-aim-spool").glob("*.jsonl"))  # nothing was journaled


def test_a_process_that_prepares_and_starts_no_run_does_not_wait_for_the_probe(monkeypatch):
    """A script prepares, then may stop before its first run (bad data, a held lock): its exit must not wait for a
    server that does not answer. Python joins every non-daemon thread at exit, so the probe's must be a daemon."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    try:
        monkeypatch.setenv("AIM_REPO", f"aim://127.0.0.1:{silent.getsockname()[1]}")
        before = set(threading.enumerate())
        AimTracker.prepare()
        assert not uploads.UPLOADS.probes[uploads.key_of(os.environ["AIM_REPO"])].done()  # still asking
        started = [t for t in threading.enumerate() if t not in before]
        assert started and all(t.daemon for t in started), started
    finally:
        silent.close()


def test_the_exit_line_gives_the_reason_of_the_runs_server_not_of_a_probe_no_run_used(proxy, tmp_path):
    """`prepare` asked with the credentials of that moment (refused); the runs then went to another server, which
    cannot be reached: that is why their records stay in the spool."""
    unreachable = f"aim://127.0.0.1:{free_port()}"
    script = textwrap.dedent(
        f"""
        import os
        from ntn.tracking import start_run
        from ntn_tracker_aim import uploads
        from ntn_tracker_aim.tracker import AimTracker
        AimTracker.prepare()
        uploads.UPLOADS.probes[uploads.key_of(os.environ["AIM_REPO"])].result(timeout=30)
        os.environ["AIM_REPO"] = "{unreachable}"
        with start_run("elsewhere_seed0", {{}}, backend="aim") as run:
            run.log_metrics({{"loss": 1.0}}, step=0)
        """
    )
    env = dict(os.environ, AIM_REPO=f"aim://127.0.0.1:{proxy.port}", NTN_AIM_EXIT_TIMEOUT="2")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("ntn-tracker-aim:")]
    assert f"not delivered to {unreachable} (the server cannot be reached" in line, line


def test_on_a_slow_link_the_probe_never_delays_training_and_a_refusal_stops_the_next_run(
    aim_server, monkeypatch, capfd
):
    slow = AuthProxy(aim_server.port, CF_HEADERS, delay_s=2.0)  # every answer, refusals too, takes 2 s
    try:
        monkeypatch.setenv("AIM_REPO", f"aim://127.0.0.1:{slow.port}")
        with start_run("slowlink_seed0", {}) as run:  # the 403 is not in yet: this run is journaled
            run.log_metrics({"loss": 0.5}, step=0)
        assert capfd.readouterr().err == ""  # the run has ended before the server's answer came
        err, deadline = "", time.monotonic() + 30
        while "refused" not in err and time.monotonic() < deadline:
            time.sleep(0.1)
            err += capfd.readouterr().err
        said = err.strip().splitlines()  # the refusal, in one line, as soon as it came
        assert len(said) == 1 and "refused the credentials (HTTP 403)" in said[0], said
        with pytest.raises(TrackerConfigError, match=r"refused the credentials \(HTTP 403\)"):
            with start_run("slowlink_seed1", {}):
                pytest.fail("the run must not start")
        journals = [read_records(p) for p in Path(".ntn-aim-spool").glob("*.jsonl")]
        (kept,) = [records for records in journals if records[0]["name"] == "slowlink_seed0"]
        ops = [r["op"] for r in kept if r["op"] != "artifact"]  # packages.txt (git.diff in a dirty checkout)
        assert ops == ["open", "provenance", "metrics", "finalize"]  # kept for `ntn-trackers sync`
        assert slow.accepted == {"http": 0, "websocket": 0}  # nothing was delivered with the wrong credentials
    finally:
        slow.close()


# After a reconnect, aim 3.29's own resource finalizers raise KeyError (its resource pool is re-keyed);
# the data is intact, which is what this test checks.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_headers_survive_websocket_reconnection(proxy, aim_server, monkeypatch):
    monkeypatch.setenv("AIM_REPO", f"aim://127.0.0.1:{proxy.port}")
    for k, v in CF.items():
        monkeypatch.setenv(k, v)
    with start_run("reconnect_seed0", {"experiment": "reconnect"}) as tracked:
        for step in range(3):
            tracked.log_metrics({"loss": float(step)}, step=step)
        deadline = time.monotonic() + 60
        while proxy.accepted["websocket"] == 0 and time.monotonic() < deadline:  # the uploader is connected
            time.sleep(0.1)
        time.sleep(1.0)
        proxy.drop_connections()  # the uploader's aim client must reconnect, with the headers
        time.sleep(0.5)
        for step in range(3, 6):
            tracked.log_metrics({"loss": float(step)}, step=step)
        tracked.log_summary({"success": True})
    run = server_runs(aim_server)["reconnect_seed0"]
    assert series(run)[("loss", "")] == [(s, float(s)) for s in range(6)]
    assert proxy.refused["websocket"] == 0 and proxy.accepted["websocket"] >= 2


@pytest.mark.parametrize(
    "env, message",
    [
        ({"AIM_CUSTOM_HEADERS": "{not json"}, r"AIM_CUSTOM_HEADERS is not valid JSON \(Expecting property name"),
        ({"AIM_CUSTOM_HEADERS": '["a", "b"]'}, "AIM_CUSTOM_HEADERS must be a JSON object"),
        ({"CF_ACCESS_CLIENT_ID": "only-the-id"}, "CF_ACCESS_CLIENT_SECRET is not set"),
        ({"CF_ACCESS_CLIENT_SECRET": "only-the-secret"}, "CF_ACCESS_CLIENT_ID is not set"),
    ],
)
def test_bad_auth_variables_get_one_line_before_anything_is_sent(proxy, monkeypatch, env, message):
    monkeypatch.setenv("AIM_REPO", f"aim://127.0.0.1:{proxy.port}")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(TrackerConfigError, match=message) as err:
        with start_run("bad_seed0", {}):
            pass
    assert "\n" not in str(err.value)
    assert proxy.accepted == {"http": 0, "websocket": 0} and proxy.refused == {"http": 0, "websocket": 0}
    for value in env.values():
        assert value not in str(err.value) or value.startswith(("{", "["))


SCRIPT = textwrap.dedent(
    """
    from ntn.tracking import start_run
    with start_run("subprocess_seed0", {"env_keys": sorted(__import__("os").environ)}) as run:
        run.log_hparams({"where": "subprocess"})
        for step in range(5):
            run.log_metrics({"loss": step * 0.5}, step=step)
        run.log_summary({"success": True})
    """
)


def test_a_training_process_logs_through_the_proxy_and_no_secret_is_stored(proxy, aim_server, tmp_path):
    env = dict(os.environ, AIM_REPO=f"aim://127.0.0.1:{proxy.port}", TRACKER_BACKEND="aim", **CF)
    subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True, cwd=tmp_path, timeout=120)
    run = server_runs(aim_server)["subprocess_seed0"]  # at once: the process ended once the server had it all
    assert run["hparams"] == {"where": "subprocess"} and not run.active and run.end_time is not None
    assert series(run)[("loss", "")] == [(s, s * 0.5) for s in range(5)]
    assert grep_tree(aim_server.root, list(CF.values())) == []
    assert grep_tree(tmp_path, list(CF.values())) == []


def test_reader_reads_the_server_repository_once_it_is_indexed(tmp_path, monkeypatch):
    server = AimServer(tmp_path / "fresh-repo")  # its own server: nothing indexed there yet
    try:
        monkeypatch.setenv("AIM_REPO", server.url)
        log_a_run("readback_seed3")
        assert flush()
        assert read_runs(server.url) == (
            [],
            [
                f"{server.url}: 1 runs on the server are not indexed yet and cannot be read (aim 3.29 indexes a "
                "server's runs only while `aim up` runs on its repository, or after `aim storage reindex` there)"
            ],
        )
        index_runs(server.root)  # what `aim up` does on the server's machine
        records, problems = read_runs(server.url)
    finally:
        server.stop()
    assert problems == [] and [r["experiment_name"] for r in records] == ["readback_seed3"]
    record = records[0]
    down = subprocess.run(
        [sys.executable, "-m", "ntn.tracking", "summary", "--from", f"aim:{server.url}"], capture_output=True, text=True
    )  # the server has stopped
    assert down.returncode == 2 and down.stderr.count("\n") == 1 and "Traceback" not in down.stderr, down.stderr
    assert f"ntn-trackers summary: Aim server at {server.url} is unreachable" in down.stderr
    assert record["hparams"] == {"bond_dim": 6} and record["summary"] == {"success": True, "status": "finished"}
    assert record["metrics_log"] == [{"step": -1, "loss": 9.0}] + [{"step": s, "loss": 1.0 / (s + 1)} for s in range(4)]
