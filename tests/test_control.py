"""``whisperd status``: the control socket of a real daemon, and the socket's own rules."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, wait_for

from devkit.clips import JFK
from whisperd import config, control


def status(cfg_path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "whisperd", "status", "--config", str(cfg_path), *extra],
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip


def status_json(cfg_path) -> dict:
    out = status(cfg_path, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_status_shows_workers_tasks_and_queue_depths(broker, daemon_factory, slow_job, tmp_path):
    sock = tmp_path / "run" / "control.sock"
    d = daemon_factory(model=slow_job.section, workers={"count": 2}, control={"socket": str(sock)}).start()
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660

    d.stage(JFK.path, "jfk.flac")
    broker.publish({"task_id": "short-1", "audio_path": "jfk.flac"})
    broker.completions(1, 60)
    s = wait_for(lambda: (x := status_json(d.config_path))["jobs_done"] == 1 and x, 10, "1 job done")
    assert sorted(w["state"] for w in s["workers"]) == ["idle", "idle"]
    assert sum(w["jobs_done"] for w in s["workers"]) == 1
    assert all(w["task"] is None and w["task_elapsed_s"] is None for w in s["workers"])

    broker.publish(b"not json: goes to the dead-letter queue")
    d.stage(slow_job.audio, "long.wav")
    for task_id in ("long-1", "long-2", "waiting-1"):
        broker.publish({"task_id": task_id, "audio_path": "long.wav"})

    def both_busy_and_depths_known() -> dict | None:
        s = status_json(d.config_path)
        busy = [w for w in s["workers"] if w["state"] == "busy"]
        ok = len(busy) == 2 and s["queue_depth"] == 1 and s["dead_letter_depth"] == 1
        return s if ok else None

    s = wait_for(both_busy_and_depths_known, 60, "2 busy workers, 1 waiting job, 1 dead letter", interval=0.5)
    assert s["pid"] == d.pid and s["state"] == "running" and s["broker"] == "ok"
    assert s["workers_wanted"] == 2 and s["job_queue"] == broker.job_queue
    assert 0 <= s["depth_age_s"] < 30
    assert sorted(w["pid"] for w in s["workers"]) == sorted(p.pid for p in d.workers())
    assert sorted(w["task"] for w in s["workers"]) == ["long-1", "long-2"]
    for w in s["workers"]:
        assert w["task_elapsed_s"] is not None and w["task_elapsed_s"] >= 0
        assert w["rss_mb"] > 50  # a loaded whisper model, measured from /proc by the supervisor
        assert w["gpu_mb"] is None  # no GPU here: shown as unknown, not as 0
        assert w["broker"] == "ok" and w["device"] == "cpu"

    text = status(d.config_path)
    assert text.returncode == 0, text.stderr
    assert "long-1" in text.stdout and "long-2" in text.stdout and " busy " in text.stdout
    assert f"queue {broker.job_queue}: 1 waiting; dead letters: 1" in text.stdout

    d.signal(signal.SIGQUIT)
    assert d.wait_exit(30) == 0
    assert not sock.exists(), "the socket is removed on exit"
    gone = status(d.config_path)
    assert gone.returncode == 3
    assert "the daemon is not running" in gone.stderr and str(sock) in gone.stderr


def test_status_without_a_daemon_says_so(tmp_path):
    cfg = tmp_path / "whisperd.toml"
    cfg.write_text(f'[control]\nsocket = "{tmp_path / "nothing.sock"}"\n')
    out = status(cfg, "--json")
    assert out.returncode == 3 and out.stdout == ""
    assert "not running" in out.stderr and "no such socket" in out.stderr


def make_cfg(sock: str = "") -> config.Config:
    return config.parse({"control": {"socket": sock}} if sock else {})


def test_socket_path_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    assert control.socket_path(make_cfg("/x/y.sock")) == "/x/y.sock"
    assert control.client_candidates(make_cfg("/x/y.sock")) == ["/x/y.sock"]
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    assert control.socket_path(make_cfg()) == str(tmp_path / "control.sock")
    assert control.client_candidates(make_cfg())[-1] == "/run/whisperd/control.sock"
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    root = os.geteuid() == 0
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    mine = str(tmp_path / "whisperd" / "control.sock")
    assert control.socket_path(make_cfg()) == ("/run/whisperd/control.sock" if root else mine)
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    fallback = f"/tmp/whisperd-{os.geteuid()}/control.sock"
    assert control.socket_path(make_cfg()) == ("/run/whisperd/control.sock" if root else fallback)


def test_a_stale_socket_is_replaced_and_a_live_one_is_left_alone(tmp_path):
    path = str(tmp_path / "c.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: a daemon that was killed
    first = control.ControlServer(path)
    assert first.open()
    second = control.ControlServer(path)
    assert not second.open(), "a second daemon must not steal a live daemon's socket"
    second.close()
    assert os.path.exists(path)

    answers: list[dict] = []
    client = threading.Thread(target=lambda: answers.append(control.query([path])))
    client.start()
    deadline = time.monotonic() + 10  # the backlog also holds the second daemon's probe: serve until answered
    while client.is_alive() and time.monotonic() < deadline:
        if select.select([first.sock], [], [], 0.1)[0]:
            first.serve(lambda: {"ok": 1})
    client.join(5)
    assert answers == [{"ok": 1}]
    first.close()
    assert not os.path.exists(path)
    with pytest.raises(control.NotRunning, match="no such socket"):
        control.query([path])


NOBODY = 65534


@pytest.mark.parametrize("planted", ["symlink", "foreign_owner", "group_writable"])
def test_a_shared_tmp_socket_directory_is_refused_unless_private(planted):
    """Without XDG_RUNTIME_DIR a non-root user falls back to /tmp/whisperd-<uid>, which anyone may make first."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as two users")
    directory = Path(f"/tmp/whisperd-{NOBODY}")
    subprocess.run(["rm", "-rf", str(directory)], check=True)
    public = Path(tempfile.mkdtemp(prefix="whisperd-test-"))  # readable by nobody, unlike pytest's tmp_path
    public.chmod(0o755)
    target = public / "attacker"
    target.mkdir()
    if planted == "symlink":
        directory.symlink_to(target)
        target.chmod(0o777)
    else:
        directory.mkdir()
        os.chown(directory, *((1234, 1234) if planted == "foreign_owner" else (NOBODY, NOBODY)))
        directory.chmod(0o755 if planted == "foreign_owner" else 0o770)
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # the planter's daemon, ready to lie
    try:
        fake.bind(str(directory / "control.sock"))
        os.chmod(directory / "control.sock", 0o777)
        fake.listen(4)
        os.setegid(NOBODY)
        os.seteuid(NOBODY)
        try:  # in this process: a subprocess as nobody may not reach the clone's venv
            with pytest.raises(control.NotRunning) as refused:
                control.query([str(directory / "control.sock")])
            server = control.ControlServer(str(directory / "control.sock"))
            assert not server.open(), "the daemon bound its socket in a directory it does not own alone"
        finally:
            os.seteuid(0)
            os.setegid(0)
        assert f"{directory}/control.sock: refused: {directory}" in str(refused.value), refused.value
        assert select.select([fake], [], [], 0)[0] == [], "the client talked to the planted socket"
    finally:
        fake.close()
        subprocess.run(["rm", "-rf", str(directory), str(public)], check=True)


def test_a_private_tmp_socket_directory_is_accepted(tmp_path):
    directory = tmp_path / "mine"
    directory.mkdir(mode=0o700)
    control.check_private_dir(str(directory))


def test_status_names_the_daemon_that_answered_and_refuses_another_configs(broker, daemon_factory, tmp_path):
    """Issue 15: ``whisperd status --config B`` printed whichever daemon owned the socket B names."""
    sock = tmp_path / "shared.sock"  # as when two configs leave control.socket at its default
    a = daemon_factory("a", control={"socket": str(sock)}).start()
    s = status_json(a.config_path)
    assert (s["pid"], s["config"], s["socket"]) == (a.pid, os.path.realpath(a.config_path), str(sock))
    text = status(a.config_path)
    assert f"config: {os.path.realpath(a.config_path)}; control socket: {sock}" in text.stdout

    b = tmp_path / "b.toml"
    b.write_text(f'[control]\nsocket = "{sock}"\n')
    out = status(b, "--json")
    assert out.returncode == 4 and out.stdout == ""
    assert f"the daemon that answered on {sock} (pid {a.pid}) runs {os.path.realpath(a.config_path)}" in out.stderr
    assert f"not {b}" in out.stderr
