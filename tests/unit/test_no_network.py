"""The unit tier's promise: no broker, no network. The guard in conftest.py refuses every
AF_INET/AF_INET6 connection; these tests prove it does, and that the parent conftest (which
pytest loads for this tier too) opens none when imported."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from whisperd import broker, config

from .conftest import NetworkGuard

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent


def test_a_tcp_connection_fails_loudly(no_network: NetworkGuard) -> None:
    """Even to localhost, even with a short timeout: the attempt fails the test, it is not a quiet refusal."""
    with pytest.raises(pytest.fail.Exception, match="opens no network connections"):
        socket.create_connection(("127.0.0.1", 5672), timeout=0.1)
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s, pytest.raises(pytest.fail.Exception):
        s.connect_ex(("::1", 5672))
    assert len(no_network.attempts) == 2
    no_network.attempts.clear()  # expected here: not a failure at teardown


def test_connecting_to_a_broker_fails_loudly_through_pika(no_network: NetworkGuard) -> None:
    """What the worker's ``broker.connect`` would do: pika's ``except Exception`` cannot turn the
    guard's error into an ordinary "broker unreachable" that a worker retries forever."""
    with pytest.raises(pytest.fail.Exception):
        broker.connect(config.parse({}).broker, "unit test")
    assert no_network.attempts
    no_network.attempts.clear()


def test_unix_sockets_still_work(tmp_path: Path) -> None:
    """The decoder helper and the supervisor's reports use unix sockets: those stay allowed."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        a.send(b"x")
        assert b.recv(1) == b"x"
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen()
        client.connect(path)


def test_importing_the_parent_conftest_opens_no_connection() -> None:
    """tests/conftest.py is imported before any fixture of this tier can guard it: check it in a
    fresh interpreter with connections refused from the start."""
    code = textwrap.dedent(
        f"""
        import socket, sys
        def refuse(self, address):
            if self.family != socket.AF_UNIX:
                raise SystemExit(f"tests/conftest.py connected to {{address!r}} when imported")
            return real(self, address)
        real = socket.socket.connect
        socket.socket.connect = socket.socket.connect_ex = refuse
        sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]  # as pytest puts them (rootdir conftest, pythonpath)
        import conftest
        from devkit.clips import JFK
        assert JFK.path.exists()
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr or done.stdout
