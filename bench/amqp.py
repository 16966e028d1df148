"""The producer side: publish jobs and time the completions as they arrive.

Completions are consumed (not polled with basic_get), so each one is stamped within
milliseconds of the broker delivering it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pika

from bench.daemon import BROKER_URL
from whisperd.broker import job_queue_arguments
from whisperd.config import BrokerConfig


@dataclass
class Received:
    at: float
    body: dict[str, Any]


@dataclass
class Queues:
    """A unique job/result queue pair, declared as whisperd declares them, deleted on close."""

    prefix: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:10]}")

    @property
    def jobs(self) -> str:
        return f"{self.prefix}.jobs"

    @property
    def results(self) -> str:
        return f"{self.prefix}.results"


class Producer:
    def __init__(self, queues: Queues, heartbeat: int | None = None) -> None:
        """``heartbeat=0`` for a producer that sits idle for minutes (pika's blocking connection
        answers heartbeats only while it is called)."""
        self.queues = queues
        params = pika.URLParameters(BROKER_URL)
        if heartbeat is not None:
            params.heartbeat = heartbeat
        self.conn = pika.BlockingConnection(params)
        self.pub = self.conn.channel()
        self.pub.confirm_delivery()
        self.sub = self.conn.channel()
        cfg = BrokerConfig(job_queue=queues.jobs, result_queue=queues.results)
        self.pub.queue_declare(f"{queues.jobs}.dead", durable=True, arguments={"x-queue-type": "quorum"})
        self.pub.queue_declare(queues.jobs, durable=True, arguments=job_queue_arguments(cfg))
        self.pub.queue_declare(queues.results, durable=True)
        self._consumer = self.sub.consume(queues.results, auto_ack=True, inactivity_timeout=0.05)

    def publish(self, job: dict[str, Any]) -> float:
        """Publish one job (waits for the broker's confirm); returns the time just before."""
        t = time.monotonic()
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        self.pub.basic_publish("", self.queues.jobs, json.dumps(job).encode(), props)
        return t

    def receive(self, timeout: float) -> Received | None:
        """The next completion (or progress event), or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, _, body = next(self._consumer)
            if method is not None:
                return Received(time.monotonic(), json.loads(body))
        return None

    def collect(self, n: int, timeout: float, status: tuple[str, ...] = ("done", "failed")) -> list[Received]:
        """Wait for ``n`` completions with one of ``status``; raises if they do not all come."""
        got: list[Received] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            r = self.receive(deadline - time.monotonic())
            if r is not None and r.body.get("status") in status:
                got.append(r)
        if len(got) < n:
            raise RuntimeError(f"only {len(got)} of {n} completions within {timeout:.0f} s")
        failed = [r.body for r in got if r.body.get("status") == "failed"]
        if failed:
            raise RuntimeError(f"{len(failed)} jobs failed, e.g. {failed[0]}")
        return got

    def close(self) -> None:
        try:
            self.sub.cancel()
            for q in (self.queues.jobs, f"{self.queues.jobs}.dead", self.queues.results):
                self.pub.queue_delete(q)
        finally:
            if self.conn.is_open:
                self.conn.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
