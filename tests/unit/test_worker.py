"""whisperd.worker.Worker in-process: the real worker and its real parts (session, deliveries,
jobs, publisher, status), with pika's connection and the pipeline faked (tests/unit/fakes.py),
passed in as the Worker's ``connect`` and ``load``.

The test's own thread plays pika's I/O thread: it runs what the job thread queued with
``add_callback_threadsafe``, or runs the worker's whole loop (``_serve_forever``, ``run``) over a
fake connection. The job thread is the worker's own, ended by closing its delivery queue.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pika
import pika.spec
import pytest

from whisperd import amqp_guard, config
from whisperd.contract import FAILED, PROCESSING, Completion, ErrorCode, job_body
from whisperd.lifecycle import WorkerExit
from whisperd.pipeline import Outcome, Pipeline
from whisperd.reporting import BrokerState, WorkerState
from whisperd.results import ResultStore
from whisperd.worker import Worker

from .fakes import FakeChannel, FakeConnection, FakePipeline, FakeTranscriber

JOBS, RESULTS, DEAD = "t.jobs", "t.results", "t.jobs.dead"


class Titles(list[str]):
    """The process titles the worker sets, recorded (not applied: pytest keeps its own title, and
    tests that look for "whisperd: worker" processes never find the test runner), with the thread
    that set each."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def set(self, title: str) -> None:
        self.append(title)
        self.threads.add(threading.current_thread().name)


class Connects:
    """The worker's ``connect``: hands out ``connections`` in order; a further connect fails the test."""

    def __init__(self) -> None:
        self.connections: list[FakeConnection] = []
        self.handed = 0

    def __call__(self, cfg: Any, name: str, heartbeat: int | None = None, between: Any = None) -> FakeConnection:
        assert self.handed < len(self.connections), "the worker connected more often than the test expected"
        self.handed += 1
        return self.connections[self.handed - 1]


@pytest.fixture
def titles() -> Titles:
    return Titles()


@pytest.fixture
def connects() -> Connects:
    return Connects()


def worker_cfg(tmp_path: Path, **sections: dict[str, Any]) -> config.Config:
    raw: dict[str, dict[str, Any]] = {
        "broker": {"job_queue": JOBS, "result_queue": RESULTS, "reconnect_max_s": 0.05},
        "storage": {"media_root": str(tmp_path / "media"), "results_dir": str(tmp_path / "results")},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config.parse(raw)


@pytest.fixture
def make_worker(tmp_path: Path, titles: Titles, connects: Connects) -> Iterator[Callable[..., Worker]]:
    """``make_worker(pipeline, **sections)``: a Worker on test queues with its job thread running."""
    threads: list[tuple[Worker, threading.Thread]] = []

    def make(pipeline: Any = None, **sections: dict[str, Any]) -> Worker:
        chosen = pipeline if pipeline is not None else FakePipeline()
        w = Worker(worker_cfg(tmp_path, **sections), slot=1, threads=1, sock=None, connect=connects,
                   load=lambda: chosen, set_title=titles.set, requeue_delay_s=0.0)  # fmt: skip
        w.pipeline = chosen  # as run() takes it from the job thread
        t = threading.Thread(target=w._job_thread, args=(Future(),), name="jobs", daemon=True)
        t.start()
        threads.append((w, t))
        return w

    yield make
    for w, t in threads:
        w.deliveries.close()
        t.join(5)
        assert not t.is_alive(), "a closed delivery queue did not end the job thread"


def connected(w: Worker, connects: Connects, server_version: str = "3.13.7") -> tuple[FakeConnection, FakeChannel]:
    """Open ``w``'s session on a fresh fake connection, as ``Worker._serve`` does before its loop;
    the job channel's calls so far (confirms, qos, declares, consume) are forgotten."""
    conn = FakeConnection(server_version)
    connects.connections.append(conn)
    w.session.open(w._on_message, between=w._report)
    w.status.send(broker=BrokerState.OK, state=WorkerState.IDLE)
    ch = conn.consuming
    ch.calls.clear()
    return conn, ch


def deliver(w: Worker, ch: FakeChannel, body: bytes, tag: int = 7, **props: Any) -> None:
    """The broker hands ``w`` a job on ``ch``: what pika calls in the I/O thread."""
    w._on_message(ch, pika.spec.Basic.Deliver(delivery_tag=tag), pika.BasicProperties(**props), body)


def wait_settled(w: Worker, timeout: float = 5.0) -> None:
    assert w.deliveries.wait_idle(timeout), f"still {w.deliveries.inflight} in flight"


def wait_for_handoffs(w: Worker, n: int, timeout: float = 5.0) -> None:
    """Until the job thread has ``n`` handoffs (callbacks that settle a delivery) waiting for the I/O thread."""
    deadline = time.monotonic() + timeout
    while w.session.handoffs.waiting() < n:
        assert time.monotonic() < deadline, f"expected {n} handoffs, got {w.session.handoffs.waiting()}"
        time.sleep(0.002)


# -- one job, the I/O thread played by the test ---------------------------------------------------


def test_a_done_job_is_published_then_acked_and_only_by_the_io_thread(
    make_worker: Callable[..., Worker], connects: Connects, titles: Titles
) -> None:
    """The at-least-once contract: the completion is confirmed on the result queue before the job
    is acked, and the job thread never touches the channel (pika channels are not thread-safe),
    nor sets the process title (setproctitle renames the thread that calls it)."""
    w = make_worker()
    conn, ch = connected(w, connects)
    deliver(w, ch, job_body("t-1", "jfk.flac"), tag=7, correlation_id="c-1")
    conn.wait_for_callbacks(2)  # the busy title's nudge, then the completion and ack
    assert ch.calls == [] and w.deliveries.inflight == 1  # handed back, but nothing done on the channel yet
    assert titles == []

    assert conn.run_callbacks() == 2
    w.status.show_title()  # the I/O loop's next turn
    assert ch.names() == ["basic_publish", "basic_ack"]
    (queue, body, props), ack = ch.published()[0], ch.of("basic_ack")[0]
    assert (queue, body["task_id"], body["status"]) == (RESULTS, "t-1", "done")
    assert ch.of("basic_publish")[0].args["mandatory"] is True  # an unroutable completion must not pass
    assert (props.correlation_id, props.message_id, props.delivery_mode) == ("c-1", "t-1:done", 2)
    assert ack.args["delivery_tag"] == 7
    assert {c.thread for c in ch.calls} == {threading.current_thread().name}
    assert w.deliveries.inflight == 0 and (w.jobs.done, w.jobs.failed) == (1, 0)
    report = w.status.current
    assert (report.state, report.task, report.done) == (WorkerState.IDLE, None, 1)
    assert report.job is not None and (report.job.seq, report.job.status) == (1, "done")
    assert titles == ["whisperd: worker 1 [busy t-1]", "whisperd: worker 1 [idle]"]
    assert titles.threads == {threading.current_thread().name}


def test_the_reply_to_copy_goes_after_the_ack_on_a_channel_of_its_own(
    make_worker: Callable[..., Worker], connects: Connects
) -> None:
    """reply_to is the producer's choice, so hostile: a reply that costs its channel must not cost
    the job channel, and it can no longer undo the ack."""
    w = make_worker()
    conn, ch = connected(w, connects)
    deliver(w, ch, job_body("t-2", "jfk.flac"), reply_to="caller.replies", correlation_id="c-2")
    conn.wait_for_callbacks(2)
    conn.run_callbacks()
    assert ch.names() == ["basic_publish", "basic_ack", "basic_qos"]  # the qos: a round trip after the ack
    reply_channel = conn.channels[-1]
    assert reply_channel is w.session.reply_channel() and reply_channel is not ch
    (queue, body, props), = reply_channel.published()  # fmt: skip
    assert (queue, body["status"], props.correlation_id) == ("caller.replies", "done", "c-2")
    assert reply_channel.of("basic_publish")[0].args["mandatory"] is False


def test_progress_events_go_out_before_the_completion(make_worker: Callable[..., Worker], connects: Connects) -> None:
    """With events.progress a ``processing`` event leaves once the audio is decoded, queued to the
    same I/O thread as the completion: a consumer never sees "processing" after "done"."""
    w = make_worker(events={"progress": True})
    conn, ch = connected(w, connects)
    deliver(w, ch, job_body("t-3", "jfk.flac"))
    conn.wait_for_callbacks(3)  # the title's nudge, the processing event, then the completion and ack
    conn.run_callbacks()
    statuses = [body["status"] for _, body, _ in ch.published()]
    assert statuses == [PROCESSING, "done"] and ch.names()[-1] == "basic_ack"
    assert ch.published()[0][1]["duration_s"] == 11.0
    assert w.deliveries.inflight == 0


# -- the connection goes while a job is in hand -----------------------------------------------


def test_a_connection_lost_before_the_io_thread_ran_the_handoff_settles_the_job(
    make_worker: Callable[..., Worker], connects: Connects
) -> None:
    """pika never runs a callback queued just before its connection died: the worker's fallback
    settles the job instead (inflight 0, not busy forever); the broker requeues it, unacked."""
    w = make_worker()
    conn, ch = connected(w, connects)
    deliver(w, ch, job_body("t-4", "jfk.flac"))
    wait_for_handoffs(w, 1)
    conn.lose()
    w.session.drop()
    assert w.deliveries.inflight == 0 and w.session.handoffs.waiting() == 0
    assert w.session.connection is None and w.session.channel is None
    conn.run_callbacks()  # even if the stale callback ran after all, it is claimed once only
    assert ch.calls == [] and w.deliveries.inflight == 0


@pytest.mark.parametrize("dropped", [True, False], ids=["dropped", "lost-not-yet-dropped"])
def test_a_job_that_ends_after_its_connection_is_gone_is_settled_at_once(
    make_worker: Callable[..., Worker], connects: Connects, dropped: bool
) -> None:
    """Whether the I/O thread already dropped the connection (``connection`` None) or pika only
    found it closed (add_callback_threadsafe raises), the job thread settles the job itself."""
    gate = threading.Event()
    w = make_worker(FakePipeline(gate=gate))
    conn, ch = connected(w, connects)
    deliver(w, ch, job_body("t-5", "jfk.flac"))
    assert w.pipeline.started.wait(5)
    conn.run_callbacks()  # the busy title's nudge
    conn.lose()
    if dropped:
        w.session.drop()
    gate.set()
    wait_settled(w)
    assert conn.queued() == 0 and ch.calls == [] and w.jobs.done == 1
    assert w.status.current.state is WorkerState.IDLE  # the session was not told: only _outage says unreachable


def test_a_job_that_ends_in_an_outage_leaves_the_worker_connecting(
    make_worker: Callable[..., Worker], connects: Connects
) -> None:
    """The worker's own broker state, not its last report, decides what a settled job leaves it as."""
    gate = threading.Event()
    w = make_worker(FakePipeline(gate=gate))
    conn, ch = connected(w, connects)
    deliver(w, ch, job_body("t-5b", "jfk.flac"))
    assert w.pipeline.started.wait(5)
    conn.lose()
    w.session.unreachable()
    w.session.drop()
    gate.set()
    wait_settled(w)
    assert w.status.current.state is WorkerState.CONNECTING


def test_a_delivery_from_before_a_reconnect_is_not_acked(
    make_worker: Callable[..., Worker], connects: Connects
) -> None:
    """A delivery tag belongs to its channel: after a reconnect the old job is back in the queue
    (the broker redelivers it), and acking its tag on the new channel would ack another message."""
    gate = threading.Event()
    w = make_worker(FakePipeline(gate=gate))
    _, old = connected(w, connects)
    deliver(w, old, job_body("t-6", "jfk.flac"), tag=3)
    assert w.pipeline.started.wait(5)
    w.session.drop()
    old.is_open = True  # identity alone must stop the ack, even on a channel that still looks open
    conn, new = connected(w, connects)
    gate.set()
    conn.wait_for_callbacks(1)
    conn.run_callbacks()
    assert old.calls == [] and new.calls == [] and w.deliveries.inflight == 0


# -- jobs that are dead-lettered or returned ------------------------------------------------------


def real_pipeline(cfg: config.Config, tmp_path: Path) -> Pipeline:
    """The real Pipeline (with a fake transcriber), as Worker._load builds it."""
    log = logging.getLogger("whisperd.worker")
    return Pipeline(cfg, FakeTranscriber(), ResultStore(str(tmp_path / "results")), "host:worker-1:1", log)  # type: ignore[arg-type]


def test_an_invalid_body_is_dead_lettered_with_its_reason_then_acked(
    make_worker: Callable[..., Worker], connects: Connects, tmp_path: Path
) -> None:
    """A body without a task_id gets no completion (nobody to address it to): it is parked in the
    dead-letter queue with the reason in its headers, and acked only after that publish."""
    w = make_worker(real_pipeline(worker_cfg(tmp_path), tmp_path))
    conn, ch = connected(w, connects)
    deliver(w, ch, b"not json {", tag=9, message_id="m-9")
    conn.wait_for_callbacks(2)
    conn.run_callbacks()
    assert ch.names() == ["basic_publish", "basic_ack"]
    (queue, body, props), = ch.published()  # fmt: skip
    assert (queue, body, props.message_id) == (DEAD, b"not json {", "m-9")
    assert props.headers["x-whisperd-reason"].startswith("invalid_job: body is not valid JSON")
    assert props.headers["x-whisperd-worker"] == w.name
    assert ch.of("basic_ack")[0].args["delivery_tag"] == 9
    assert w.status.current.job is not None and w.status.current.job.status == "rejected"


def test_without_a_dead_letter_queue_an_invalid_body_is_rejected(
    make_worker: Callable[..., Worker], connects: Connects
) -> None:
    """No queue took the dead letter (UnroutableError): reject it, so the broker's own DLX decides;
    never ack a message that is then nowhere."""
    rejected = Outcome(None, ack=False, reason="invalid_job: body must be a JSON object, got list")
    w = make_worker(FakePipeline(outcome=rejected))
    conn, ch = connected(w, connects)
    ch.unroutable.add(DEAD)
    deliver(w, ch, b"[]", tag=4)
    conn.wait_for_callbacks(2)
    conn.run_callbacks()
    assert ch.names() == ["basic_publish", "basic_reject"]
    assert ch.of("basic_reject")[0].args == {"delivery_tag": 4, "requeue": False}


def test_undecodable_headers_get_a_failed_completion_and_a_dead_letter(
    make_worker: Callable[..., Worker], connects: Connects, tmp_path: Path
) -> None:
    """Headers pika could not decode (amqp_guard marks them) refuse the job before it is parsed:
    the producer still gets a failed completion, and the job goes to the dead-letter queue."""
    w = make_worker(real_pipeline(worker_cfg(tmp_path), tmp_path))
    conn, ch = connected(w, connects)
    headers = {amqp_guard.UNDECODABLE: "headers nested deeper than 32 levels"}
    deliver(w, ch, job_body("t-7", "jfk.flac"), headers=headers)
    conn.wait_for_callbacks(2)
    conn.run_callbacks()
    assert ch.names() == ["basic_publish", "basic_publish", "basic_ack"]
    (q1, completion, _), (q2, _, parked) = ch.published()
    assert (q1, completion["status"], completion["error"]["code"]) == (RESULTS, FAILED, ErrorCode.INVALID_HEADERS)
    assert q2 == DEAD and amqp_guard.UNDECODABLE not in parked.headers  # the bad headers are not copied
    assert parked.headers["x-whisperd-reason"].startswith("invalid_headers: ")
    assert w.jobs.failed == 1


def test_an_unexpected_error_returns_the_job_to_the_queue(
    make_worker: Callable[..., Worker], connects: Connects
) -> None:
    """ENOSPC, a bug: the job thread survives, and the job is nacked back rather than left unacked
    (or acked without a result)."""
    w = make_worker(FakePipeline(error=OSError(28, "No space left on device")))
    conn, ch = connected(w, connects)
    deliver(w, ch, job_body("t-8", "jfk.flac"), tag=5)
    conn.wait_for_callbacks(2)
    conn.run_callbacks()
    assert ch.names() == ["basic_nack"] and ch.of("basic_nack")[0].args["requeue"] is True
    assert w.deliveries.inflight == 0 and (w.jobs.done, w.jobs.failed) == (0, 0)


# -- the worker's whole loop over a fake connection -------------------------------------------


def job(task_id: str) -> tuple[bytes, pika.BasicProperties]:
    return job_body(task_id, "jfk.flac"), pika.BasicProperties(content_type="application/json")


def test_the_worker_recycles_after_max_jobs(make_worker: Callable[..., Worker], connects: Connects) -> None:
    """After workers.max_jobs the worker stops consuming, finishes, and exits RECYCLED (the
    supervisor starts a fresh process rather than counting it as stopped)."""
    w = make_worker(workers={"max_jobs": 2})
    conn = FakeConnection()
    conn.ready.extend([job("r-1"), job("r-2"), job("r-3")])
    connects.connections.append(conn)
    assert w._serve_forever() == WorkerExit.RECYCLED
    ch = conn.consuming
    assert [c.args["delivery_tag"] for c in ch.of("basic_ack")] == [1, 2]
    assert ch.names().index("basic_cancel") > ch.names().index("basic_publish")
    assert [json.loads(b)["task_id"] for b in w.pipeline.bodies] == ["r-1", "r-2"]
    assert len(conn.ready) == 1  # the third job stays in the queue for another worker
    assert w.deliveries.inflight == 0 and not conn.is_open


def test_sigterm_finishes_the_job_in_hand_then_exits_stopped(
    make_worker: Callable[..., Worker], connects: Connects, titles: Titles
) -> None:
    """Draining: stop consuming at once, but publish and ack the job in hand before exiting 0."""
    gate = threading.Event()
    w = make_worker(FakePipeline(gate=gate))
    conn = FakeConnection()
    conn.ready.append(job("s-1"))

    def sigterm_mid_job(c: FakeConnection) -> None:
        if w.pipeline.started.is_set() and not w.stopping:
            w.handle_term(signal.SIGTERM, None)
        elif w.stopping and c.consuming.of("basic_cancel"):
            gate.set()  # the job ends only once the worker stopped consuming

    conn.on_poll = sigterm_mid_job
    connects.connections.append(conn)
    assert w._serve_forever() == WorkerExit.STOPPED
    names = conn.consuming.names()
    assert names.index("basic_cancel") < names.index("basic_publish") < names.index("basic_ack")
    assert w.status.current.state == WorkerState.DRAINING and not w.recycling
    assert titles[0] == "whisperd: worker 1 [idle]" and "whisperd: worker 1 [busy s-1]" in titles
    assert titles[-1] == "whisperd: worker 1 [draining]" and titles.threads == {threading.current_thread().name}


def test_a_lost_connection_requeues_the_job_and_the_redelivery_is_acked_on_the_new_one(
    make_worker: Callable[..., Worker], connects: Connects, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection dies after the job thread handed its result over but before the I/O loop ran
    it: the handoff is abandoned (the job is settled, not busy forever), the worker reconnects, and
    the broker's redelivery is published and acked on the new channel; nothing touches the dead one."""
    gate = threading.Event()
    w = make_worker(FakePipeline(gate=gate))
    first, second = FakeConnection(), FakeConnection()
    first.ready.append(job("l-1"))
    second.ready.append(job("l-1"))  # the broker requeued the unacked job

    def lose_after_the_handoff(c: FakeConnection) -> None:
        if w.pipeline.started.is_set() and c.is_open:
            gate.set()
            wait_for_handoffs(w, 1)
            c.lose()

    def stop_after_the_ack(c: FakeConnection) -> None:
        if c.channels and c.consuming.of("basic_ack"):
            w.handle_term(signal.SIGTERM, None)

    first.on_poll, second.on_poll = lose_after_the_handoff, stop_after_the_ack
    connects.connections.extend([first, second])
    with caplog.at_level(logging.INFO, "whisperd.worker"):
        assert w._serve_forever() == WorkerExit.STOPPED
    dead = first.consuming
    assert not dead.of("basic_publish") and not dead.of("basic_ack")
    assert [c.args["delivery_tag"] for c in second.consuming.of("basic_ack")] == [1]
    assert len(w.pipeline.bodies) == 2 and w.deliveries.inflight == 0
    assert "1 handoffs to the I/O thread were lost with the connection" in caplog.text
    assert "broker unreachable: " in caplog.text and "broker connection restored" in caplog.text
    assert w.session.state is BrokerState.OK and w.status.current.broker is BrokerState.OK


def test_a_progress_event_goes_on_the_channel_of_the_moment_it_is_sent(
    make_worker: Callable[..., Worker], connects: Connects
) -> None:
    """The I/O thread reads the channel when it sends the event: one queued before a reconnect goes
    on the new channel, and one whose channel closed is dropped, never sent on a closed channel
    (which would raise in the I/O loop and take a healthy connection down)."""
    w = make_worker()
    _, old = connected(w, connects)
    note = Completion(task_id="t-p", status=PROCESSING, duration_s=11.0, worker=w.name, progress=0.5)
    w.session.drop()
    _, new = connected(w, connects)
    w.publisher.note(note, None)
    assert [body["status"] for _, body, _ in new.published()] == [PROCESSING] and old.calls == []
    new.is_open = False
    w.publisher.note(note, None)
    assert len(new.published()) == 1


# -- process life: run() with its own job thread ----------------------------------------------


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """run() installs the worker's signal handlers: give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_run_serves_then_ends_its_job_thread(
    tmp_path: Path, connects: Connects, titles: Titles, restore_signals: None
) -> None:
    """The whole process life on a fake broker: boot, serve a job, drain on SIGTERM, exit 0, and the
    job thread ends with it (a closed delivery queue)."""
    pipeline = FakePipeline()
    w = Worker(worker_cfg(tmp_path), slot=1, threads=1, connect=connects, load=lambda: pipeline,
               set_title=titles.set)  # fmt: skip
    conn = FakeConnection()
    conn.ready.append(job("run-1"))
    conn.on_poll = lambda c: c.consuming.of("basic_ack") and w.handle_term(signal.SIGTERM, None)
    connects.connections.append(conn)
    before = set(threading.enumerate())
    assert w.run() == WorkerExit.STOPPED
    for t in set(threading.enumerate()) - before:
        t.join(5)
        assert not t.is_alive(), f"{t.name} outlived run()"
    assert titles[:2] == ["whisperd: worker 1 [booting]", "whisperd: worker 1 [idle]"]
    assert w.jobs.done == 1 and w.status.current.state is WorkerState.DRAINING


def test_a_model_that_cannot_load_fails_the_boot(
    tmp_path: Path, titles: Titles, restore_signals: None, caplog: pytest.LogCaptureFixture
) -> None:
    def load() -> Any:
        raise RuntimeError("no such file")

    w = Worker(worker_cfg(tmp_path), slot=1, threads=1, load=load, set_title=titles.set)
    assert w.run() == WorkerExit.BOOT_ERROR
    report = w.status.current
    assert report.state is WorkerState.BOOT_FAILED and "no such file" in (report.error or "")
    assert "cannot load model" in caplog.text and titles == ["whisperd: worker 1 [booting]"]
