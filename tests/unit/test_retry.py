"""Unit tests of whisperd.retry: the shared backoff and quiet close."""

from __future__ import annotations

import socket

from whisperd.retry import Backoff, close_quietly


def test_backoff_doubles_up_to_its_limit_and_starts_over_after_a_success():
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5
    assert [Backoff(1.0, 60.0).delay(n) for n in (1, 2, 6, 7, 30)] == [1, 2, 32, 60, 60]


def test_jitter_stays_within_its_fraction():
    b = Backoff(10.0, 10.0, jitter=0.2)
    delays = [b.next() for _ in range(200)]
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert len(set(delays)) > 1


def test_close_quietly_swallows_what_a_broken_resource_raises():
    class Broken:
        is_open = True

        def close(self) -> None:
            raise OSError("connection reset")

    close_quietly(Broken())
    close_quietly(None)
    s = socket.socket()
    close_quietly(s)
    assert s.fileno() == -1
