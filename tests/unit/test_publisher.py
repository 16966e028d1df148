"""whisperd.publisher: what goes to the broker about a job, on a fake connection's channels."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from whisperd import config
from whisperd.contract import PROCESSING, Completion
from whisperd.deliveries import Delivery
from whisperd.logs import Labelled
from whisperd.publisher import Publisher, ReplyClosedConnection
from whisperd.session import BrokerSession

from .fakes import FakeChannel, FakeConnection, done_completion

RESULTS = "t.results"


@pytest.fixture
def publisher(tmp_path: Path) -> tuple[Publisher, FakeConnection]:
    """A Publisher on an open session over a fake connection."""
    cfg = config.parse({"broker": {"job_queue": "t.jobs", "result_queue": RESULTS},
                        "storage": {"results_dir": str(tmp_path / "results")}})  # fmt: skip
    conn = FakeConnection()
    log = Labelled(logging.getLogger("whisperd.worker"), "worker 1")
    s = BrokerSession(cfg, "worker 1", 1, log, lambda *a, **k: conn)
    s.open(lambda *a: None, between=lambda: None)
    conn.consuming.calls.clear()
    return Publisher(cfg.broker, s, "host:worker-1:1", log), conn


def delivery(ch: FakeChannel, **props: Any) -> Delivery:
    return Delivery(ch, 5, pika.BasicProperties(**props), b'{"task_id": "p-1"}')


def test_finish_publishes_then_acks_and_replies_last(publisher: tuple[Publisher, FakeConnection]) -> None:
    p, conn = publisher
    ch = conn.consuming
    p.finish(delivery(ch, reply_to="caller", correlation_id="c"), done_completion("p-1"), ack=True)
    assert ch.names() == ["basic_publish", "basic_ack", "basic_qos"]
    (queue, body, props), = conn.channels[-1].published()  # fmt: skip
    assert (queue, body["status"], props.correlation_id) == ("caller", "done", "c")


def test_finish_leaves_a_delivery_of_another_channel_alone(publisher: tuple[Publisher, FakeConnection]) -> None:
    """Its tag means nothing on the channel of now, and the broker has requeued it."""
    p, conn = publisher
    stale = FakeChannel(conn)
    p.finish(delivery(stale), done_completion("p-1"), ack=True)
    p.requeue(delivery(stale), "a bug")
    assert stale.calls == [] and conn.consuming.calls == []


def test_a_reply_that_costs_its_channel_is_logged_and_forgotten(
    publisher: tuple[Publisher, FakeConnection], caplog: pytest.LogCaptureFixture
) -> None:
    p, conn = publisher
    ch = conn.consuming
    reply = p.session.reply_channel()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no queue 'gone'")

    reply.basic_publish = refuse  # type: ignore[method-assign]
    p.finish(delivery(ch, reply_to="gone"), done_completion("p-1"), ack=True)
    assert ch.names() == ["basic_publish", "basic_ack", "basic_qos"]  # the job channel is untouched by it
    assert "could not reply to 'gone'" in caplog.text
    assert p.session.reply_channel() is not reply


def test_a_reply_that_costs_the_connection_raises_after_the_ack(publisher: tuple[Publisher, FakeConnection]) -> None:
    p, conn = publisher
    ch = conn.consuming

    def close_connection(*args: Any, **kwargs: Any) -> None:
        raise pika.exceptions.ConnectionClosedByBroker(541, "INTERNAL_ERROR")

    p.session.reply_channel().basic_publish = close_connection  # type: ignore[method-assign]
    with pytest.raises(ReplyClosedConnection, match="after a reply to 'amq.rabbitmq.reply-to"):
        p.finish(delivery(ch, reply_to="amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxAAAAAAAAAAAAAAAAAAAAAAA="),
                 done_completion("p-1"), ack=True)  # fmt: skip
    assert ch.names()[:2] == ["basic_publish", "basic_ack"]


def test_a_note_goes_on_the_channel_of_now_or_nowhere(publisher: tuple[Publisher, FakeConnection]) -> None:
    p, conn = publisher
    note = Completion(task_id="p-1", status=PROCESSING, duration_s=3.0, worker="w", progress=0.5)
    p.note(note, None)
    assert [(q, b["status"]) for q, b, _ in conn.consuming.published()] == [(RESULTS, PROCESSING)]
    p.session.drop()
    p.note(note, None)  # no channel: dropped, no error
