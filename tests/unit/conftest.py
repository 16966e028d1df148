"""The unit tier: no broker, no network, no real Whisper weights; runs in seconds (`make test-unit`).

Every test here runs with AF_INET/AF_INET6 connections refused, so a test that would need a
broker (or anything else over the network) fails at once and says so, instead of waiting on a
socket. Unix sockets stay allowed: the decoder helper talks over a socketpair.

tests/conftest.py is loaded first (pytest loads every conftest from the rootdir down): it puts
tests/fixtures on sys.path (pyproject's ``pythonpath`` puts the repo root, for ``devkit``), and
importing it opens no connection (its broker fixtures connect only when a test asks for them;
test_no_network.py checks the import).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class NetworkGuard:
    """The connections tests tried to open; any left at teardown fail the test, even if the code
    under test swallowed the error raised at the attempt."""

    attempts: list[str] = field(default_factory=list)


def _guarded(real: Callable[..., Any], guard: NetworkGuard) -> Callable[..., Any]:
    def connect(self: socket.socket, address: Any) -> Any:
        if self.family != socket.AF_UNIX:
            guard.attempts.append(f"{socket.AddressFamily(self.family).name} {address!r}")
            # pytest's Failed is a BaseException: no ``except Exception`` (pika's, the worker's) hides it.
            pytest.fail(f"the unit tier opens no network connections, but a test tried {address!r}", pytrace=True)
        return real(self, address)

    return connect


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    guard = NetworkGuard()
    monkeypatch.setattr(socket.socket, "connect", _guarded(socket.socket.connect, guard))
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded(socket.socket.connect_ex, guard))
    yield guard
    if guard.attempts:
        pytest.fail(f"the test tried to open network connections: {guard.attempts}")
