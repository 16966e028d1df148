"""whisperd.children: reaping without blocking, signalling a child that is gone, exit statuses in words."""

from __future__ import annotations

import os
import signal
import time

from whisperd.children import describe_status, reaped, send_signal


def _child(code: int) -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(code)
    return pid


def _reap_all(pids: set[int], timeout_s: float = 10.0) -> dict[int, int]:
    found: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while set(found) != pids and time.monotonic() < deadline:
        found.update((pid, status) for pid, status in reaped() if pid in pids)
        time.sleep(0.01)
    return found


def test_reaped_returns_every_exited_child_and_describes_how():
    exited = _child(3)
    killed = os.fork()
    if killed == 0:
        time.sleep(60)
        os._exit(0)
    send_signal(killed, signal.SIGKILL)
    statuses = _reap_all({exited, killed})
    assert describe_status(statuses[exited]) == "exit code 3"
    assert describe_status(statuses[killed]) == "killed by SIGKILL"


def test_reaped_does_not_block_and_signalling_a_reaped_child_is_harmless():
    pid = _child(0)
    _reap_all({pid})
    start = time.monotonic()
    assert [p for p, _ in reaped() if p == pid] == []
    assert time.monotonic() - start < 1.0
    send_signal(pid, signal.SIGTERM)  # gone: no ProcessLookupError
