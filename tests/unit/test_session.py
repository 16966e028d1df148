"""whisperd.session: the worker's one connection, its channels, handoffs and outages, on a fake connection."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from whisperd import broker, config
from whisperd.logs import Labelled
from whisperd.reporting import BrokerState
from whisperd.session import BrokerSession

from .fakes import FakeConnection

JOBS = "t.jobs"


def session(tmp_path: Path, *connections: FakeConnection, slot: int = 1) -> tuple[BrokerSession, list[str]]:
    """A session whose ``connect`` hands out ``connections`` in turn; also the names it connected with."""
    cfg = config.parse({"broker": {"job_queue": JOBS, "prefetch": 1},
                        "storage": {"results_dir": str(tmp_path / "results")}})  # fmt: skip
    names: list[str] = []
    left = list(connections)

    def connect(cfg: Any, name: str, heartbeat: int | None = None, between: Any = None) -> FakeConnection:
        names.append(name)
        return left.pop(0)

    log = Labelled(logging.getLogger("whisperd.worker"), f"worker {slot}")
    return BrokerSession(cfg, f"worker {slot}", slot, log, connect), names


def test_open_consumes_with_confirms_prefetch_and_an_ack_timeout(tmp_path: Path) -> None:
    conn = FakeConnection()
    s, names = session(tmp_path, conn)
    tag = s.open(lambda *a: None, between=lambda: None)
    ch = conn.consuming
    assert names == [f"whisperd worker 1 on {socket.gethostname()}"] and s.channel is ch and tag == ch.consumer_tag
    assert ch.names()[:2] == ["confirm_delivery", "basic_qos"] and ch.names()[-1] == "basic_consume"
    consume = ch.of("basic_consume")[0].args
    assert consume["queue"] == JOBS
    assert consume["arguments"] == {"x-consumer-timeout": broker.consumer_timeout_ms(s.cfg)}
    assert s.state is BrokerState.OK and s.ever_connected and s.is_current(ch)


@pytest.mark.parametrize(("version", "slot", "warned"), [("3.11.2", 1, True), ("3.11.2", 2, False),
                                                         ("3.13.7", 1, False)])  # fmt: skip
def test_a_broker_that_ignores_consumer_timeouts_is_named_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, version: str, slot: int, warned: bool
) -> None:
    """Slot 1 says it for the host; only at the first connect."""
    s, _ = session(tmp_path, FakeConnection(version), FakeConnection(version), slot=slot)
    with caplog.at_level(logging.WARNING, "whisperd.worker"):
        s.open(lambda *a: None, between=lambda: None)
        s.drop()
        s.open(lambda *a: None, between=lambda: None)
    assert caplog.text.count(f"RabbitMQ {version} ignores per-consumer ack timeouts") == (1 if warned else 0)


def test_server_version_reads_what_the_broker_announced_or_nothing() -> None:
    assert broker.server_version(FakeConnection("3.12.1")) == "3.12.1"
    assert broker.server_version(object()) == ""


def test_an_outage_is_said_at_its_start_at_every_retry_and_at_its_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s, _ = session(tmp_path, FakeConnection())
    with caplog.at_level(logging.INFO, "whisperd.worker"):
        s.unreachable()
        first = s.retry_after("connection refused")
        second = s.retry_after("connection refused")
        assert s.state is BrokerState.UNREACHABLE and 0 < first < second
        s.open(lambda *a: None, between=lambda: None)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "worker 1: broker unreachable: connection refused; reconnecting with backoff"
    assert messages[1].startswith("worker 1: still cannot get back to the broker after ")
    assert "(retry 1): connection refused; next try in" in messages[1]
    assert messages[2].startswith("worker 1: broker connection restored after ") and messages[2].endswith("at try 2")
    assert s.state is BrokerState.OK and s.outage_since is None and s.backoff.attempt == 0


def test_drop_closes_the_connection_and_settles_what_it_never_ran(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conn = FakeConnection()
    s, _ = session(tmp_path, conn)
    s.open(lambda *a: None, between=lambda: None)
    ran: list[str] = []
    s.call(lambda: ran.append("callback"), if_connection_lost=lambda: ran.append("fallback"))
    with caplog.at_level(logging.INFO, "whisperd.worker"):
        s.drop()
    assert ran == ["fallback"] and not conn.is_open and s.connection is None and s.channel is None
    assert "1 handoffs to the I/O thread were lost with the connection" in caplog.text
    conn.run_callbacks()
    assert ran == ["fallback"]  # each handoff ends once
    s.call(lambda: ran.append("callback"), if_connection_lost=lambda: ran.append("no connection"))
    assert ran == ["fallback", "no connection"]


def test_a_nudge_runs_in_the_io_thread_or_not_at_all(tmp_path: Path) -> None:
    """What the I/O loop does anyway at its next turn: no connection or a closed one drops it, silently."""
    conn = FakeConnection()
    s, _ = session(tmp_path, conn)
    ran: list[str] = []
    s.nudge(lambda: ran.append("none"))  # not connected yet
    s.open(lambda *a: None, between=lambda: None)
    s.nudge(lambda: ran.append("open"))
    assert conn.run_callbacks() == 1 and ran == ["open"]
    conn.lose()
    s.nudge(lambda: ran.append("closed"))
    assert ran == ["open"] and s.handoffs.waiting() == 0


def test_the_reply_channel_is_opened_once_and_again_after_it_closed(tmp_path: Path) -> None:
    conn = FakeConnection()
    s, _ = session(tmp_path, conn)
    s.open(lambda *a: None, between=lambda: None)
    reply = s.reply_channel()
    assert reply is s.reply_channel() and reply is not s.channel
    reply.is_open = False
    assert s.reply_channel() is not reply
    depths = s.queue_depths()
    assert (depths.jobs, depths.dead) == (0, 0)
