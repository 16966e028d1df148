"""The completion listener: the result queue's completions, recorded in the task store."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from whisperd import amqp_guard, broker
from whisperd.api.completions import parse_completion
from whisperd.api.records import TaskRecord
from whisperd.api.store import Applied, TaskStore
from whisperd.config import Config
from whisperd.contract import PROCESSING, Completion
from whisperd.retry import Backoff, close_quietly

log = logging.getLogger("whisperd.api")

# Completions are recorded one at a time anyway; a small prefetch also bounds the memory that
# oversized messages (up to the broker's max_message_size each) can take before they are rejected.
PREFETCH = 2


class CompletionListener:
    """Consumes the result queue in a thread; acks each completion after the store has it.

    No message can stop it or make it reconnect: one whose headers cannot be decoded, that is
    not a valid completion, whose handling raises, or that the broker has delivered more than
    ``broker.RESULT_DELIVERY_LIMIT`` times, is parked in ``<queue>.dead`` with the reason and
    acked (headers nested 800 deep once made pika fail inside its I/O loop: the listener
    reconnected forever and the completions behind that message were never read). Completions
    of tasks the API did not submit, and a second final state for a finished task, are acked and
    ignored with a log line. A failure to store (disk full, permissions) is not the message's
    fault: it goes back to the queue after a back-off (on the same connection, so the completions
    already delivered behind it are not redelivered too), ``healthy`` is False until a completion
    is stored again, and one that keeps failing is parked after RESULT_DELIVERY_LIMIT deliveries.
    """

    def __init__(self, cfg: Config, store: TaskStore, on_final: Callable[[TaskRecord], None]) -> None:
        self.cfg = cfg
        self.store = store
        self.on_final = on_final
        self.queue = cfg.api.result_queue or cfg.broker.result_queue
        self.parked_queue = broker.parked_queue(self.queue)
        self.name = f"whisperd api@{socket.gethostname()}"
        self.connected = False
        self.storing = True  # False from a failure to store until the next success
        self._store_backoff = Backoff(1.0, cfg.broker.reconnect_max_s)
        self.rejected = 0  # parked (or, without a parked queue, rejected)
        self.ignored = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="completions", daemon=True)

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and self.connected and self.storing

    def health(self) -> dict[str, Any]:
        reading = "reading" if self.healthy else "reconnecting" if not self.connected else "cannot store"
        reading = reading if self._thread.is_alive() else "stopped"
        return {"status": "ok" if self.healthy else "unavailable", "completions": reading,
                "rejected_messages": self.rejected, "ignored_messages": self.ignored}  # fmt: skip

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        backoff = Backoff(1.0, self.cfg.broker.reconnect_max_s)
        while not self._stop.is_set():
            try:
                self._consume()
                backoff.reset()
            except Exception as e:
                self.connected = False
                delay = backoff.next()
                if isinstance(e, pika.exceptions.AMQPError | OSError):
                    log.warning("result queue %s: %s; reconnecting in %.0f s", self.queue, e or type(e).__name__, delay)
                else:
                    log.exception("result queue %s: unexpected error; reconnecting in %.0f s", self.queue, delay)
                self._stop.wait(delay)

    def _consume(self) -> None:
        conn = broker.connect(self.cfg.broker, "whisperd api (completions)")
        try:
            channel = conn.channel()
            channel.confirm_delivery()  # a parked message is confirmed before the original is acked
            channel.basic_qos(prefetch_count=PREFETCH)
            broker.declare(channel, self.cfg.broker)
            broker.declare_result_queue(channel, self.queue)
            self.connected = True
            log.info("reading completions from %s", self.queue)
            for method, props, body in channel.consume(self.queue, inactivity_timeout=0.5):
                if self._stop.is_set():
                    break
                if method is not None:
                    self._settle(channel, method.delivery_tag, props, body)
            channel.cancel()
        finally:
            self.connected = False
            close_quietly(conn)

    def _settle(self, channel: Any, tag: int, props: pika.BasicProperties, body: bytes) -> None:
        """Ack one message once it is recorded, ignored or parked; return it to the queue if the store failed."""
        try:
            why = self._take(props, body)
        except OSError as e:
            self._store_failed(channel, tag, e)
            return
        except Exception as e:  # a bug, or a record the store cannot read: this message only
            log.exception("cannot handle a message on %s (%d bytes)", self.queue, len(body))
            why = f"handling it failed: {type(e).__name__}: {e}"
        if why is not None:
            self._park(channel, tag, props, body, why)
        else:
            channel.basic_ack(tag)
            self._store_backoff.reset()
        self.storing = True  # settled without a failure to store

    def _store_failed(self, channel: Any, tag: int, e: OSError) -> None:
        """Return the message after a back-off; the broker counts each return (x-delivery-count)."""
        self.storing = False
        delay = self._store_backoff.next()
        log.error("cannot record a completion from %s (%s); returning it in %.0f s", self.queue, e, delay)
        deadline = time.monotonic() + delay
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            channel.connection.sleep(min(left, 0.5))
        channel.basic_nack(tag, requeue=True)

    def _take(self, props: pika.BasicProperties, body: bytes) -> str | None:
        """Record or ignore one message; returns why it must be parked instead, or None."""
        if (why := amqp_guard.undecodable(props.headers)) is not None:
            return f"its AMQP headers cannot be decoded: {why}"
        if (seen := broker.delivery_count(props)) >= broker.RESULT_DELIVERY_LIMIT:
            return f"delivered {seen + 1} times (the limit is {broker.RESULT_DELIVERY_LIMIT}) without being recorded"
        try:
            completion = parse_completion(body)
        except ValueError as e:
            return f"not a completion: {e}"
        self._record(completion)
        return None

    def _record(self, c: Completion) -> None:
        what, record = self.store.apply(c)
        if what == Applied.RECORDED and record is not None and record.final:
            self.on_final(record)
        elif what == Applied.FOREIGN:
            self.ignored += 1
            level = logging.DEBUG if c.status == PROCESSING else logging.INFO
            log.log(level, "ignoring a %s completion of task %s: not a task of this API", c.status, c.task_id)
        elif what == Applied.LATE and record is not None:
            self.ignored += 1
            code = (c.error or {}).get("code")
            log.warning("ignoring a %s completion%s of task %s: it is %s already", c.status,
                        f" ({code})" if code else "", c.task_id, record.state)  # fmt: skip

    def _park(self, channel: Any, tag: int, props: pika.BasicProperties, body: bytes, why: str) -> None:
        self.rejected += 1
        log.error("parking a message of %s in %s (%d bytes): %s", self.queue, self.parked_queue, len(body), why[:300])
        try:
            broker.park(channel, self.parked_queue, body, props, why, self.name)
        except pika.exceptions.UnroutableError:  # no parked queue (a classic result queue's node set-up)
            channel.basic_reject(tag, requeue=False)
            return
        channel.basic_ack(tag)
