"""whisperd.jobs: the job thread's loop on its own, with a fake connection and a fake pipeline."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pika

from whisperd import config
from whisperd.contract import job_body
from whisperd.deliveries import Deliveries, Delivery
from whisperd.jobs import Jobs
from whisperd.logs import Labelled
from whisperd.publisher import Publisher
from whisperd.reporting import Reporter, WorkerState
from whisperd.session import BrokerSession
from whisperd.worker_status import WorkerStatus

from .fakes import FakeConnection, FakePipeline


def jobs(tmp_path: Path, requeue_delay_s: float) -> tuple[Jobs, FakeConnection, list[int]]:
    """Jobs over an open session; the list records each settle."""
    cfg = config.parse({"storage": {"results_dir": str(tmp_path / "results")}})
    conn = FakeConnection()
    log = Labelled(logging.getLogger("whisperd.worker"), "worker 1")
    session = BrokerSession(cfg, "worker 1", 1, log, lambda *a, **k: conn)
    session.open(lambda *a: None, between=lambda: None)
    conn.consuming.calls.clear()
    deliveries = Deliveries()
    settled: list[int] = []
    publisher = Publisher(cfg.broker, session, "host:worker-1:1", log)
    status = WorkerStatus(Reporter(None), 1, lambda title: None)
    j = Jobs(cfg, "host:worker-1:1", log, deliveries, session, publisher, status,
             lambda: settled.append(deliveries.settle()), requeue_delay_s)  # fmt: skip
    return j, conn, settled


def test_the_loop_counts_jobs_and_ends_when_the_queue_closes(tmp_path: Path) -> None:
    j, conn, settled = jobs(tmp_path, 0.0)
    t = threading.Thread(target=j.loop, args=(FakePipeline(),))
    t.start()
    j.deliveries.put(Delivery(conn.consuming, 1, pika.BasicProperties(), job_body("j-1", "jfk.flac")))
    conn.wait_for_callbacks(2)
    assert j.status.current.state is WorkerState.BUSY and j.status.current.task == "j-1"
    conn.run_callbacks()
    j.deliveries.close()
    t.join(5)
    assert not t.is_alive() and (j.done, j.failed, j.seen) == (1, 0, 1) and settled == [0]
    assert conn.consuming.names() == ["basic_publish", "basic_ack"]


def test_an_unexpected_error_waits_before_the_job_goes_back(tmp_path: Path) -> None:
    """A failure that repeats must not spin through the queue: the delay comes before the nack."""
    j, conn, settled = jobs(tmp_path, 0.2)
    t = threading.Thread(target=j.loop, args=(FakePipeline(error=MemoryError()),))
    t.start()
    started = time.monotonic()
    j.deliveries.put(Delivery(conn.consuming, 1, pika.BasicProperties(), job_body("j-2", "jfk.flac")))
    conn.wait_for_callbacks(2)
    assert time.monotonic() - started >= 0.2
    conn.run_callbacks()
    j.deliveries.close()
    t.join(5)
    assert conn.consuming.names() == ["basic_nack"] and settled == [0] and (j.done, j.failed) == (0, 0)
