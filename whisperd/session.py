"""A worker's one broker connection: its channels, the handoffs queued on it, and its outages.

The main thread opens the connection and runs its I/O loop; every other thread reaches it only
through pika's ``add_callback_threadsafe``: ``call`` by way of handoff.Handoffs, so a handoff lost
with its connection still settles, by its fallback, when the connection is dropped; ``nudge`` for
what settles nothing. An
outage is said once as a warning and then at every retry, with how long it has lasted.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pika.exceptions

from whisperd import broker
from whisperd.config import Config
from whisperd.handoff import Handoffs
from whisperd.logs import Labelled
from whisperd.reporting import BrokerState, QueueDepths
from whisperd.retry import Backoff, close_quietly

Connect = Callable[..., Any]  # broker.connect's signature: (BrokerConfig, name, *, between) -> connection


class BrokerSession:
    """The connection, the job channel consumed on, a reply channel opened on demand, and the
    broker's state as this worker sees it (``state``, the worker's own, not its last report)."""

    def __init__(self, cfg: Config, label: str, slot: int, log: Labelled, connect: Connect = broker.connect) -> None:
        self.cfg = cfg
        self.slot = slot
        self.log = log
        self.name = f"whisperd {label} on {socket.gethostname()}"
        self._connect = connect
        self.connection: Any = None
        self.channel: Any = None
        self._reply_channel: Any = None  # best-effort replies, apart from the job channel
        self.handoffs = Handoffs()  # callbacks on their way to the I/O thread
        self.state = BrokerState.CONNECTING
        self.backoff = Backoff(1.0, cfg.broker.reconnect_max_s, jitter=0.2)
        self.ever_connected = False
        self.outage_since: float | None = None
        self.retries = 0

    # -- the main (I/O) thread -------------------------------------------------------------------

    def open(self, on_message: Callable[..., None], between: Callable[[], None]) -> str:
        """Connect, open the job channel (confirms, prefetch), declare the topology and consume;
        returns the consumer tag. Raises as broker.connect and pika do; ``between`` runs after
        each node that failed to answer."""
        self.connection = self._connect(self.cfg.broker, self.name, between=between)
        self.channel = self.connection.channel()
        self._reply_channel = None
        self.channel.confirm_delivery()
        self.channel.basic_qos(prefetch_count=self.cfg.broker.prefetch)
        broker.declare(self.channel, self.cfg.broker)
        timeout_ms = broker.consumer_timeout_ms(self.cfg)
        tag: str = self.channel.basic_consume(
            self.cfg.broker.job_queue, on_message, arguments={"x-consumer-timeout": timeout_ms}
        )
        if not self.ever_connected:
            self._check_consumer_timeout(timeout_ms)
        self._connected()
        return tag

    def _connected(self) -> None:
        self.backoff.reset()
        self.ever_connected = True
        self.state = BrokerState.OK
        if self.outage_since is not None:
            self.log.info(
                "broker connection restored after %.0f s, at try %d",
                time.monotonic() - self.outage_since, self.retries + 1,
            )  # fmt: skip
            self.outage_since = None

    def drop(self) -> None:
        """Close what is left of the connection, so the broker requeues whatever we did not ack;
        then settle every handoff it never ran by its fallback."""
        conn, self.connection, self.channel, self._reply_channel = self.connection, None, None, None
        close_quietly(conn)
        if lost := self.handoffs.abandon_all():  # after the close: a handoff from now on finds it closed
            self.log.info("%d handoffs to the I/O thread were lost with the connection; their jobs are requeued", lost)

    def unreachable(self) -> None:
        """The broker cannot be used now (before the drop: what the drop settles sees it)."""
        self.state = BrokerState.UNREACHABLE

    def retry_after(self, reason: str) -> float:
        """Say why the broker cannot be used: once as a warning when an outage starts, then at every
        retry, so an operator sees what is still wrong (which node refuses, which queue is down);
        returns how long to wait before the next try."""
        delay = self.backoff.next()
        if self.outage_since is None:
            self.log.warning("broker unreachable: %s; reconnecting with backoff", reason)
            self.outage_since = time.monotonic()
            self.retries = 0
        else:
            self.retries += 1
            self.log.warning(
                "still cannot get back to the broker after %.0f s (retry %d): %s; next try in %.0f s",
                time.monotonic() - self.outage_since, self.retries, reason, delay,
            )  # fmt: skip
        return delay

    def is_current(self, channel: Any) -> bool:
        """Whether ``channel`` is the open job channel of now: a delivery tag means something only there."""
        return channel is not None and channel is self.channel and channel.is_open

    def reply_channel(self) -> Any:
        """A channel for replies, opened on first use and again after the broker closed one."""
        if self._reply_channel is None or not self._reply_channel.is_open:
            self._reply_channel = self.connection.channel()
        return self._reply_channel

    def forget_reply_channel(self) -> None:
        self._reply_channel = None

    def queue_depths(self) -> QueueDepths:
        """Ready jobs and dead letters, by passive declare: one round trip, no consumer needed."""
        jobs = self.channel.queue_declare(self.cfg.broker.job_queue, passive=True).method.message_count
        dead = self.channel.queue_declare(broker.dead_letter_queue(self.cfg.broker), passive=True).method.message_count
        return QueueDepths(jobs=jobs, dead=dead, ts=time.time())

    def _check_consumer_timeout(self, timeout_ms: int) -> None:
        """Say once whether the broker honours our ack timeout, or long jobs may be cut at its own."""
        version = broker.server_version(self.connection)
        if broker.supports_consumer_timeout(version):
            self.log.debug("RabbitMQ %s: consumer ack timeout %.0f s", version, timeout_ms / 1000)
        elif self.slot == 1:
            self.log.warning(
                "RabbitMQ %s ignores per-consumer ack timeouts (3.11.15+): its consumer_timeout (default 30 min) "
                "must exceed the longest job, up to %.0f s here, or long jobs are requeued; see docs/reliability.md",
                version or "(unknown version)", timeout_ms / 1000,
            )  # fmt: skip

    # -- any thread ------------------------------------------------------------------------------

    def call(self, callback: Callable[[], None], if_connection_lost: Callable[[], None] | None = None) -> None:
        """Run ``callback`` in the I/O thread; if the connection is lost first, run ``if_connection_lost``.

        The connection may die while a job runs; the broker then requeues the job, and the stored
        result answers the redelivery without transcribing again. A callback that settles a
        delivery passes a fallback that settles it too, so the job still counts as finished.
        """
        self.handoffs.call(self.connection, callback, if_connection_lost)

    def nudge(self, callback: Callable[[], None]) -> None:
        """Have the I/O thread run ``callback`` soon if there is a connection, else not at all: for
        what the I/O loop does anyway at its next turn (no handoff keeps it: it settles nothing)."""
        connection = self.connection
        if connection is None:
            return
        try:
            connection.add_callback_threadsafe(callback)
        except pika.exceptions.ConnectionWrongStateError:
            pass  # closed: the loop that reconnects shows it
