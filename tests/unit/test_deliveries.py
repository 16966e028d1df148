"""whisperd.deliveries: the queue between pika's I/O thread and the job thread, and the count in flight."""

from __future__ import annotations

import threading
import time

import pika

from whisperd.deliveries import Deliveries, Delivery

from .fakes import FakeChannel


def delivery(ch: FakeChannel | None, tag: int) -> Delivery:
    return Delivery(ch, tag, pika.BasicProperties(), b"{}")


def test_deliveries_are_taken_in_order_and_stay_in_flight_until_settled() -> None:
    q = Deliveries()
    q.put(delivery(None, 1))
    q.put(delivery(None, 2))
    assert [q.take().tag, q.take().tag] == [1, 2]  # type: ignore[union-attr]
    assert (q.pending(), q.inflight) == (0, 2)
    assert q.settle() == 1 and q.settle() == 0


def test_closing_ends_a_job_thread_waiting_to_take() -> None:
    """The job thread's way out: ``take`` answers None once the queue is closed, waiting or not."""
    q = Deliveries()
    taken: list[Delivery | None] = []
    t = threading.Thread(target=lambda: taken.append(q.take()))
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(2)
    assert not t.is_alive() and taken == [None]
    q.put(delivery(None, 3))
    assert q.take() is None  # closed: nothing more is handed out


def test_requeue_pending_gives_back_what_was_not_taken_and_uncounts_it() -> None:
    """Stopping: the deliveries not started are nacked back (on a channel still open) and no longer in
    flight, so a drain waits only for the job in hand."""
    q = Deliveries()
    live, gone = FakeChannel(), FakeChannel()
    gone.is_open = False
    q.put(delivery(live, 1))
    assert q.take() is not None
    q.put(delivery(live, 2))
    q.put(delivery(gone, 3))
    assert q.requeue_pending() == 2
    assert live.names() == ["basic_nack"] and live.of("basic_nack")[0].args["delivery_tag"] == 2
    assert live.of("basic_nack")[0].args["requeue"] is True and gone.calls == []
    assert (q.pending(), q.inflight) == (0, 1)


def test_settling_wakes_a_wait_for_idle() -> None:
    """``settle`` notifies: a drain waiting for the job in hand ends as the job settles, not at a poll."""
    q = Deliveries()
    q.put(delivery(None, 1))
    assert q.take() is not None
    assert not q.wait_idle(0.01)
    threading.Timer(0.05, q.settle).start()
    started = time.monotonic()
    assert q.wait_idle(5) and time.monotonic() - started < 2


def test_forget_pending_uncounts_deliveries_of_a_connection_that_is_gone() -> None:
    """With no broker left, deliveries not taken are the broker's again: a drain must not wait for them."""
    q = Deliveries()
    q.put(delivery(None, 1))
    q.put(delivery(None, 2))
    assert q.take() is not None
    assert q.forget_pending() == 1 and q.inflight == 1
    q.settle()
    assert q.wait_idle(0)
