"""Handoffs to the I/O thread on a real pika connection to the real broker: each ends exactly once,
as its callback or, when the connection is lost before its loop runs it, as its fallback."""

from __future__ import annotations

import select
import subprocess
import threading
import uuid
from urllib.parse import urlsplit

import pika
import pika.exceptions
import psutil
import pytest
from conftest import BROKER_URL, wait_for

from whisperd.handoff import Handoffs


class Tally:
    def __init__(self) -> None:
        self.ran: list[str] = []

    def callback(self) -> None:
        self.ran.append("callback")

    def if_lost(self) -> None:
        self.ran.append("if_lost")


def connect(name: str) -> pika.BlockingConnection:
    params = pika.URLParameters(BROKER_URL)
    params.client_properties = {"connection_name": name}
    return pika.BlockingConnection(params)


def close_from_the_broker(name: str) -> None:
    """The broker drops the connection (what a node that stops or dies does to its clients)."""

    def pids() -> list[str]:
        out = subprocess.run(
            ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return [line.split()[0] for line in out.splitlines() if name in line]

    pid = wait_for(lambda: pids(), 30, f"the broker listing {name}")[0]
    subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test closes it"], check=True)


def wait_readable_from_the_broker(timeout: float = 30) -> None:
    """Until this process's socket to the broker holds what the broker sent (the close frame)."""
    port = urlsplit(BROKER_URL).port or 5672
    fds = [c.fd for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port]
    assert len(fds) == 1, f"one connection to the broker expected, found {fds}"
    assert select.select(fds, [], [], timeout)[0], "the broker sent nothing"


def test_a_callback_runs_once_in_the_io_thread() -> None:
    conn, handoffs, tally = connect(f"handoff-{uuid.uuid4().hex}"), Handoffs(), Tally()
    try:
        worker = threading.Thread(target=handoffs.call, args=(conn, tally.callback, tally.if_lost))
        worker.start()
        worker.join()
        wait_for(lambda: conn.process_data_events(time_limit=0.1) or tally.ran, 10, "the callback run")
        assert tally.ran == ["callback"]
        assert handoffs.waiting() == 0
        assert handoffs.abandon_all() == 0 and tally.ran == ["callback"], "a handoff that ran is not abandoned"
    finally:
        conn.close()


def test_without_a_connection_the_fallback_runs_at_once() -> None:
    handoffs, tally = Handoffs(), Tally()
    handoffs.call(None, tally.callback, tally.if_lost)
    conn = connect(f"handoff-{uuid.uuid4().hex}")
    conn.close()
    handoffs.call(conn, tally.callback, tally.if_lost)
    handoffs.call(conn, tally.callback)  # no fallback: nothing runs, nothing is kept
    assert tally.ran == ["if_lost", "if_lost"]
    assert handoffs.waiting() == 0


def test_a_handoff_queued_as_the_broker_drops_the_connection_ends_as_its_fallback() -> None:
    """pika never runs a callback queued on a connection whose loop learns first that it is closed:
    a worker waiting on it to settle its job stayed busy forever (seen in the cluster test)."""
    name = f"handoff-{uuid.uuid4().hex}"
    conn, handoffs, tally = connect(name), Handoffs(), Tally()
    close_from_the_broker(name)
    wait_readable_from_the_broker()  # the close frame waits in the socket; pika has not read it yet
    assert conn.is_open
    handoffs.call(conn, tally.callback, tally.if_lost)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        while True:
            conn.process_data_events(time_limit=0.2)
    assert tally.ran == [], "premise: pika dropped the queued callback with the connection"
    assert handoffs.abandon_all() == 1
    assert tally.ran == ["if_lost"]
    assert handoffs.abandon_all() == 0 and tally.ran == ["if_lost"], "each handoff ends once"
