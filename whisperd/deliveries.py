"""The deliveries between pika's I/O thread and the job thread: what waits, and what is in flight.

The I/O thread puts each delivery as pika hands it over; the job thread takes them one at a time.
A delivery stays in flight from ``put`` until it is settled (acked, dead-lettered, returned, or
lost with its connection), so the worker knows when it is idle and when a drain may end. Closing
ends the job thread's wait: a closed queue hands out nothing more.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import pika


@dataclass
class Delivery:
    """One job as pika delivered it; its tag means something only on its own channel."""

    channel: Any
    tag: int
    props: pika.BasicProperties
    body: bytes


class Deliveries:
    """Pending deliveries and the count in flight, under one condition that every change notifies."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: deque[Delivery] = deque()
        self._inflight = 0
        self._closed = False

    @property
    def inflight(self) -> int:
        """Put and not yet settled: waiting, or in the job thread's hands, or on the way back."""
        with self._cond:
            return self._inflight

    def pending(self) -> int:
        """Put and not yet taken."""
        with self._cond:
            return len(self._pending)

    def put(self, delivery: Delivery) -> None:
        """I/O thread: pika handed over a delivery."""
        with self._cond:
            self._inflight += 1
            self._pending.append(delivery)
            self._cond.notify_all()

    def take(self) -> Delivery | None:
        """Job thread: the next delivery, waiting for one; None once closed (the job thread ends)."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._closed)
            return None if self._closed else self._pending.popleft()

    def requeue_pending(self) -> int:
        """I/O thread: give back to the broker what the job thread has not taken (stop consuming);
        they are settled here, so a drain waits only for the job in hand. How many there were."""
        with self._cond:
            undone = list(self._pending)
            self._pending.clear()
            self._inflight -= len(undone)
            self._cond.notify_all()
        for d in undone:
            if d.channel.is_open:
                d.channel.basic_nack(d.tag, requeue=True)
        return len(undone)

    def settle(self) -> int:
        """One delivery in flight is done with; how many are still in flight."""
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()
            return self._inflight

    def forget_pending(self) -> int:
        """No broker to ack to: uncount what was not taken (its connection is gone, and with it the
        deliveries: the broker requeued them); how many there were."""
        with self._cond:
            forgotten = len(self._pending)
            self._inflight -= forgotten
            self._pending.clear()
            self._cond.notify_all()
            return forgotten

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for nothing to be in flight; whether nothing is."""
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout)

    def close(self) -> None:
        """Hand out nothing more: a job thread waiting in ``take`` gets None and ends."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
