"""Floods against a real daemon run under the unit's descriptor limit (``prlimit --nofile=1024``).

A client of the metrics endpoint or of the control socket must never cost the supervisor its
life: idle and trickling metrics connections, and a connect flood on the control socket, while
a good job is done and a reload starts new workers. Every flood targets 127.0.0.1 or a unix
socket of the test's own daemon, and is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import requests
from conftest import wait_for

from devkit.clips import JFK
from devkit.daemon import free_port
from whisperd import metrics_server

NOFILE = 1024  # systemd's default soft limit, below the unit's LimitNOFILE
IDLE_CONNECTIONS = 1100
CONTROL_FLOOD_S = 20.0


def _raise_own_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))


def _limited(daemon_factory, **sections):
    d = daemon_factory(**sections)
    d.launcher = ["prlimit", f"--nofile={NOFILE}", "--"]
    return d


def _good_job(broker, d, task: str) -> dict:
    d.stage(JFK.path, f"{task}.flac")
    broker.publish({"task_id": task, "audio_path": f"{task}.flac"})
    [c] = broker.completions(1, 120)
    assert (c["task_id"], c["status"]) == (task, "done"), c
    return c


def _open_idle(port: int, count: int) -> tuple[list[socket.socket], int]:
    """``count`` connections that send a request's first line and never finish it."""
    socks, refused = [], 0
    for _ in range(count):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            refused += 1
            s.close()
            continue
        socks.append(s)
    return socks, refused


def test_idle_and_trickling_metrics_connections_cost_the_supervisor_a_bounded_few(broker, daemon_factory):
    _raise_own_nofile()
    port = free_port()
    d = _limited(daemon_factory, metrics={"listen": f"127.0.0.1:{port}"}).start()
    supervisor = psutil.Process(d.pid)
    assert supervisor.rlimit(psutil.RLIMIT_NOFILE)[0] == NOFILE
    fds_before = supervisor.num_fds()
    socks, _ = _open_idle(port, IDLE_CONNECTIONS)
    try:
        peak_fds = peak_threads = 0
        for _ in range(20):  # sampled while the flood is held open
            peak_fds = max(peak_fds, supervisor.num_fds())
            peak_threads = max(peak_threads, supervisor.num_threads())
            time.sleep(0.1)
        _good_job(broker, d, "flood-metrics")
        d.configure(workers={"count": 2})  # a reload forks a worker while the flood is on
        d.signal(signal.SIGHUP)
        d.wait_ready(2, 300)
        peak_fds = max(peak_fds, supervisor.num_fds())
        print(f"metrics flood: {len(socks)} connections held, supervisor fds {fds_before} -> peak {peak_fds}, "
              f"threads peak {peak_threads}, RSS {supervisor.memory_info().rss / 2**20:.0f} MB")  # fmt: skip
        assert peak_fds <= fds_before + metrics_server.MAX_CONNECTIONS + 8, peak_fds
        assert peak_threads <= 4 + metrics_server.MAX_CONNECTIONS, peak_threads
        assert d.proc.poll() is None, d.log()[-3000:]
        assert len(d.workers()) == 2
        assert "Too many open files" not in d.log()
    finally:
        for s in socks:
            s.close()
    # Idle connections were cut at the deadline; a scraper is served again.
    text = wait_for(lambda: _scrape(port), metrics_server.DEADLINE_S + 30, "a scrape after the flood")
    assert "whisperd_workers" in text

    trickler = socket.create_connection(("127.0.0.1", port), timeout=5)
    started = time.monotonic()
    while time.monotonic() - started < metrics_server.DEADLINE_S + 30 and _still_open(trickler):
        time.sleep(1)  # a byte a second: every read succeeds, the request never ends
    cut_after = time.monotonic() - started
    trickler.close()
    assert cut_after < metrics_server.DEADLINE_S + 30, "a trickling client kept its connection"
    _good_job(broker, d, "after-metrics-flood")


def _still_open(s: socket.socket) -> bool:
    try:
        s.sendall(b"G")
        return s.recv(1, socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # nothing to read: the server still waits for the rest
    except OSError:
        return False


def _scrape(port: int) -> str | None:
    try:
        r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except requests.RequestException:
        return None
    return r.text if r.status_code == 200 else None


def _status(d) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "whisperd", "status", "--config", str(d.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_connect_flood_on_the_control_socket_reads_busy_never_not_running(broker, daemon_factory):
    d = _limited(daemon_factory).start()
    path = str(d.root / "control.sock")
    stop = threading.Event()
    connects = [0]

    def flood() -> None:
        while not stop.is_set():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            with contextlib.suppress(OSError):
                s.connect(path)
                connects[0] += 1
            s.close()

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    codes = []
    try:
        deadline = time.monotonic() + CONTROL_FLOOD_S
        d.stage(JFK.path, "flood-control.flac")
        broker.publish({"task_id": "flood-control", "audio_path": "flood-control.flac"})
        while time.monotonic() < deadline:
            r = _status(d)
            codes.append(r.returncode)
            assert r.returncode in (0, 4), (r.returncode, r.stderr)
            if r.returncode == 4:
                assert "busy" in r.stderr, r.stderr
        [c] = broker.completions(1, 120)
        assert c["status"] == "done", c
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    print(f"control flood: {connects[0]} connects, whisperd status exit codes {codes}")
    assert connects[0] > 1000, "the flood did not run"
    assert d.proc.poll() is None, d.log()[-3000:]
    assert _status(d).returncode == 0
    _good_job(broker, d, "after-control-flood")
