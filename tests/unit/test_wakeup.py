"""whisperd.wakeup: a queued signal wakes the loop's poll() at once, readable sockets are named."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from whisperd.wakeup import MAX_QUEUED, Wakeup


@pytest.fixture
def wakeup() -> Iterator[Wakeup]:
    before = signal.getsignal(signal.SIGUSR1)
    w = Wakeup([signal.SIGUSR1])
    w.install()
    yield w
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGUSR1, before)


def test_a_signal_is_queued_and_wakes_the_wait(wakeup):
    start = time.monotonic()
    assert wakeup.wait([], timeout_s=0.05) == set()  # nothing: the timeout
    os.kill(os.getpid(), signal.SIGUSR1)
    assert wakeup.pop() == signal.SIGUSR1 and wakeup.pop() is None
    assert time.monotonic() - start < 1.0


def test_a_queued_signal_returns_without_polling(wakeup):
    os.kill(os.getpid(), signal.SIGUSR1)
    start = time.monotonic()
    assert wakeup.wait([], timeout_s=5.0) == set()
    assert time.monotonic() - start < 1.0 and wakeup.queue == [signal.SIGUSR1]


def test_the_queue_is_bounded(wakeup):
    for _ in range(MAX_QUEUED + 5):
        os.kill(os.getpid(), signal.SIGUSR1)
    assert len(wakeup.queue) == MAX_QUEUED


def test_wait_names_the_readable_descriptors_and_not_its_pipe(wakeup):
    a, b = socket.socketpair()
    quiet, other = socket.socketpair()
    with a, b, quiet, other:
        b.send(b"x")
        assert wakeup.wait([a.fileno(), quiet.fileno()], timeout_s=1.0) == {a.fileno()}
        os.kill(os.getpid(), signal.SIGUSR1)
        wakeup.pop()
        assert wakeup.wait([quiet.fileno()], timeout_s=0.05) == set()  # the pipe was drained, not reported
