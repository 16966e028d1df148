"""A worker process: one pika connection, one loaded model, one job at a time.

Shape from pika's basic_consumer_threaded example: the main thread owns the connection and
runs its I/O loop (so broker heartbeats keep flowing during long transcriptions), a job thread
transcribes, and hands the result back with ``connection.add_callback_threadsafe``. The I/O
thread then publishes the completion with publisher confirms and only then acks the job.

Signals: SIGTERM drains (stop consuming, finish and ack the job in hand, exit 0); SIGQUIT exits
at once (the unacked job goes back to the queue); SIGINT and SIGHUP are the supervisor's.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from setproctitle import setproctitle

from whisperd import amqp_guard, broker
from whisperd.config import Config, job_deadline_s
from whisperd.contract import FAILED, PROCESSING, Completion, ErrorCode, Job, peek_task_id
from whisperd.logs import Labelled
from whisperd.reporting import BrokerState, JobReport, QueueDepths, Reporter, WorkerState
from whisperd.retry import Backoff, close_quietly

WORKER_BOOT_ERROR = 3
DEPTH_EVERY_S = 5.0  # how often a worker reports queue depths (for `whisperd status` and metrics)
REQUEUE_DELAY_S = 1.0
PROGRESS_INTERVAL_S = 5.0  # processing events with events.progress: at most one per this many seconds


class ReplyClosedConnection(Exception):
    """The broker closed the connection over a reply (a direct reply-to name of a node it does not
    know): the job was acked before, so the worker only reconnects, at once and without an outage."""

    def __init__(self, reply_to: str, error: BaseException) -> None:
        super().__init__(f"the broker closed the connection after a reply to {reply_to!r}: {broker.reason(error)}")


@dataclass
class Delivery:
    channel: Any
    tag: int
    props: pika.BasicProperties
    body: bytes


class Worker:
    def __init__(
        self, cfg: Config, slot: int, threads: int, sock: socket.socket | None = None, device: str | None = None
    ):
        self.cfg = cfg
        self.slot = slot
        self.initial_threads = threads  # the loaded pipeline keeps the count from then on
        self.device = device
        self.name = f"{socket.gethostname()}:worker-{slot}:{os.getpid()}"
        self.label = f"worker {slot}"
        self.log = Labelled(logging.getLogger("whisperd.worker"), self.label)
        self.report = Reporter(sock)
        self.pipeline: Any = None
        self.stopping = False
        self.connection: pika.BlockingConnection | None = None
        self.channel: Any = None
        self.reply_channel: Any = None  # best-effort replies, apart from the job channel
        self.pending: deque[Delivery] = deque()
        self.cond = threading.Condition()
        self.inflight = 0
        self.done = 0
        self.failed = 0
        self.jobs_seen = 0
        self.progress_sent = 0.0  # when the last processing event went out (monotonic)
        self.max_jobs = (
            cfg.workers.max_jobs + random.randint(0, cfg.workers.max_jobs_jitter) if cfg.workers.max_jobs else 0
        )
        self.backoff = Backoff(1.0, cfg.broker.reconnect_max_s, jitter=0.2)
        self.ever_connected = False
        self.outage_since: float | None = None
        self.retries = 0

    # -- process life -------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.handle_term)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._title("booting")
        self.report.send(pid=os.getpid(), slot=self.slot, state=WorkerState.BOOTING, done=0, failed=0,
                         broker=BrokerState.CONNECTING)  # fmt: skip
        loaded: Future[Any] = Future()
        threading.Thread(target=self._job_thread, args=(loaded,), name="jobs", daemon=True).start()
        try:
            self.pipeline = loaded.result()
        except Exception as e:
            self.log.error("cannot load model %r: %s", self.cfg.model.name, e)
            self.report.send(state=WorkerState.BOOT_FAILED, error=f"cannot load model {self.cfg.model.name!r}: {e}")
            return WORKER_BOOT_ERROR
        return self._serve_forever()

    def _job_thread(self, loaded: Future[Any]) -> None:
        """Load, warm up and run every job in this one thread.

        OpenMP gives each thread that computes its own pool of torch threads: warming up in the
        main thread and transcribing here would leave two pools competing for the same cores
        (measured ~30 % slower per job on 2 cores, see bench/RESULTS.md).
        """
        try:
            loaded.set_result(self._load())
        except Exception as e:
            loaded.set_exception(e)
            return
        self._job_loop()

    def _load(self) -> Any:
        from whisperd.pipeline import Pipeline
        from whisperd.results import ResultStore
        from whisperd.transcriber import Transcriber

        started = time.monotonic()
        transcriber = Transcriber(self.cfg.model, self.initial_threads, self.device)
        transcriber.warm_up()
        store = ResultStore(self.cfg.storage.results_dir)
        if swept := store.sweep_stale_temp_files():
            self.log.info("removed %d temp files left by killed workers", swept)
        self.log.info(
            "model %s loaded by %s on %s with %d threads in %.1f s",
            self.cfg.model.name, transcriber.engine.name, transcriber.device, transcriber.threads,
            time.monotonic() - started,
        )  # fmt: skip
        self.report.send(device=transcriber.device)
        return Pipeline(self.cfg, transcriber, store, self.name, self.log)

    def handle_term(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def handle_quit(self, signum: int, frame: Any) -> None:
        os._exit(0)

    def _title(self, state: str) -> None:
        setproctitle(f"whisperd: worker {self.slot} [{state}]")

    # -- connection ---------------------------------------------------------------------------

    def _serve_forever(self) -> int:
        while not self.stopping:
            try:
                self._serve()
            except broker.TopologyMismatch as e:
                self.log.error("%s", e)
                self.report.send(state=WorkerState.BOOT_FAILED, error=str(e))
                return WORKER_BOOT_ERROR
            except ReplyClosedConnection as e:
                self.log.warning("%s; reconnecting", e)
            except broker.AUTH_ERRORS as e:
                reason = f"broker refused the credentials in broker.url ({type(e).__name__})"
                if not self.ever_connected:
                    self.log.error("%s", reason)
                    self.report.send(state=WorkerState.BOOT_FAILED, error=reason)
                    return WORKER_BOOT_ERROR
                self._outage(reason, self.backoff.next())
            except (pika.exceptions.AMQPError, OSError) as e:
                self._outage(broker.reason(e), self.backoff.next())
            finally:
                self._drop_connection()
        self._wait_idle()
        self.log.info("stopped after %d jobs", self.done + self.failed)
        return 0

    def _on_connected(self) -> None:
        self.backoff.reset()
        self.ever_connected = True
        if self.outage_since is not None:
            self.log.info(
                "broker connection restored after %.0f s, at try %d",
                time.monotonic() - self.outage_since, self.retries + 1,
            )  # fmt: skip
            self.outage_since = None

    def _drop_connection(self) -> None:
        """Close what is left of a connection, so the broker requeues whatever we did not ack."""
        conn, self.connection, self.channel, self.reply_channel = self.connection, None, None, None
        close_quietly(conn)

    def _outage(self, reason: str, delay: float) -> None:
        """Say why the broker cannot be used: once as a warning when an outage starts, then at every
        retry, so an operator sees what is still wrong (which node refuses, which queue is down)."""
        self.report.send(broker=BrokerState.UNREACHABLE, state=WorkerState.CONNECTING)
        self._title("connecting")
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
        self._sleep(delay)

    def _serve(self) -> None:
        """Consume until asked to stop; raises on connection loss."""
        self.connection = broker.connect(
            self.cfg.broker, f"whisperd {self.label} on {socket.gethostname()}", between=self.report.send
        )
        self.channel = self.connection.channel()
        self.reply_channel = None
        self.channel.confirm_delivery()
        self.channel.basic_qos(prefetch_count=self.cfg.broker.prefetch)
        broker.declare(self.channel, self.cfg.broker)
        timeout_ms = broker.consumer_timeout_ms(self.cfg)
        tag = self.channel.basic_consume(
            self.cfg.broker.job_queue, self._on_message, arguments={"x-consumer-timeout": timeout_ms}
        )
        if not self.ever_connected:
            self._check_consumer_timeout(timeout_ms)
        self._on_connected()
        self.report.send(broker=BrokerState.OK, state=WorkerState.IDLE if self.inflight == 0 else WorkerState.BUSY)
        self._title("idle" if self.inflight == 0 else f"busy {self.report.current.task or '?'}")
        last_report = last_depth = 0.0
        while True:
            self.connection.process_data_events(time_limit=1)
            now = time.monotonic()
            if now - last_report >= 1:
                self._apply_settings()
                self.report.send()
                last_report = now
            if now - last_depth >= DEPTH_EVERY_S:
                self._report_depths()
                last_depth = now
            if self.max_jobs and self.done + self.failed >= self.max_jobs and not self.stopping:
                self.log.info("recycling after %d jobs (workers.max_jobs)", self.done + self.failed)
                self.stopping = True
            if self.stopping:
                if tag is not None:
                    self.channel.basic_cancel(tag)
                    tag = None
                    self._requeue_pending()
                    self.report.send(state=WorkerState.DRAINING)
                    self._title("draining")
                if self.inflight == 0:
                    return

    def _report_depths(self) -> None:
        """Ready jobs and dead letters, by passive declare: one round trip, no consumer needed."""
        jobs = self.channel.queue_declare(self.cfg.broker.job_queue, passive=True).method.message_count
        dead = self.channel.queue_declare(broker.dead_letter_queue(self.cfg.broker), passive=True).method.message_count
        self.report.send(queue=QueueDepths(jobs=jobs, dead=dead, ts=time.time()))

    def _check_consumer_timeout(self, timeout_ms: int) -> None:
        """Say once whether the broker honours our ack timeout, or long jobs may be cut at its own."""
        version = self.connection._impl.server_properties.get("version", b"")
        version = version.decode() if isinstance(version, bytes) else str(version)
        if broker.supports_consumer_timeout(version):
            self.log.debug("RabbitMQ %s: consumer ack timeout %.0f s", version, timeout_ms / 1000)
        elif self.slot == 1:
            self.log.warning(
                "RabbitMQ %s ignores per-consumer ack timeouts (3.11.15+): its consumer_timeout (default "
                "30 min) must exceed the longest job, up to %.0f s here, or long jobs are requeued; see the README",
                version or "(unknown version)", timeout_ms / 1000,
            )  # fmt: skip

    def _apply_settings(self) -> None:
        for settings in self.report.receive():
            if self.pipeline.threads != settings.threads:
                self.log.info("now using %d threads", settings.threads)
                self.pipeline.set_threads(settings.threads)

    def _sleep(self, seconds: float) -> None:
        """Sleep in short steps, reporting, so a stop or the supervisor's watchdog is never starved."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            self._apply_settings()
            self.report.send()

    def _wait_idle(self) -> None:
        """With no broker to ack to, still let the job in hand finish writing its result."""
        while True:
            with self.cond:
                self.pending.clear()
                if self.inflight == 0:
                    return
            time.sleep(0.2)
            self.report.send()

    # -- jobs ---------------------------------------------------------------------------------

    def _on_message(self, ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        with self.cond:
            self.inflight += 1
            self.pending.append(Delivery(ch, method.delivery_tag, props, body))
            self.cond.notify()

    def _requeue_pending(self) -> None:
        with self.cond:
            undone = list(self.pending)
            self.pending.clear()
            self.inflight -= len(undone)
        for d in undone:
            if d.channel.is_open:
                d.channel.basic_nack(d.tag, requeue=True)

    def _job_loop(self) -> None:
        while True:
            with self.cond:
                while not self.pending:
                    self.cond.wait()
                delivery = self.pending.popleft()
            try:
                self._handle(delivery)
            except Exception as e:  # ENOSPC, EACCES, MemoryError, a bug: never leave the delivery unsettled
                self.log.exception("unexpected error handling a job; returning it to the queue")
                time.sleep(REQUEUE_DELAY_S)  # a failure that repeats must not spin through the queue
                self._call_in_io_thread(
                    functools.partial(self._requeue, delivery, broker.reason(e)), if_connection_lost=self._settled
                )

    def _handle(self, d: Delivery) -> None:
        task_id = peek_task_id(d.body, self.cfg.limits.max_job_bytes)
        self._title(f"busy {task_id or '?'}")
        # The deadline runs from now, decoding included; it grows once the audio's length is known.
        self.report.send(
            state=WorkerState.BUSY, task=task_id, since=time.time(), deadline=job_deadline_s(self.cfg, 0.0)
        )
        if why := amqp_guard.undecodable(d.props.headers):
            outcome = self.pipeline.refuse(d.body, ErrorCode.INVALID_HEADERS, f"the message's AMQP headers: {why}")
        else:
            outcome = self.pipeline.run(
                d.body,
                on_started=functools.partial(self._on_started, job_props=d.props),
                on_progress=functools.partial(self._on_progress, job_props=d.props),
            )
        self._report_job(outcome)
        self._hand_back(d, outcome.completion, ack=outcome.ack, reason=outcome.reason)

    def _report_job(self, outcome: Any) -> None:
        """The job's outcome for the supervisor's metrics; ``seq`` tells a new job from a repeated report."""
        self.jobs_seen += 1
        c = outcome.completion
        if c is None:
            job = JobReport(self.jobs_seen, "rejected", "invalid_job", outcome.reused)
        else:
            code = (c.error or {}).get("code")
            job = JobReport(self.jobs_seen, c.status, code, outcome.reused, c.processing_s, c.duration_s)
        self.report.send(job=job)

    def _on_started(self, job: Job, duration_s: float, job_props: pika.BasicProperties | None = None) -> None:
        self.report.send(deadline=job_deadline_s(self.cfg, duration_s), duration_s=duration_s)
        self.progress_sent = time.monotonic()
        if self.cfg.events.progress:
            self._publish_progress(job, duration_s, 0.0, job_props)

    def _on_progress(
        self, job: Job, duration_s: float, fraction: float, job_props: pika.BasicProperties | None = None
    ) -> None:
        """A ``processing`` event with the share done, at most every PROGRESS_INTERVAL_S and not at the end
        (the completion follows at once)."""
        if not self.cfg.events.progress or fraction >= 1.0:
            return
        if time.monotonic() - self.progress_sent >= PROGRESS_INTERVAL_S:
            self.progress_sent = time.monotonic()
            self._publish_progress(job, duration_s, fraction, job_props)

    def _publish_progress(
        self, job: Job, duration_s: float, fraction: float, job_props: pika.BasicProperties | None
    ) -> None:
        note = Completion(
            task_id=job.task_id,
            status=PROCESSING,
            duration_s=round(duration_s, 3),
            worker=self.name,
            progress=round(fraction, 3),
            audio_done_s=round(fraction * duration_s, 1),
        )
        # Also to reply_to, with the job's correlation_id: an RPC-style caller sees "processing" too.
        self._call_in_io_thread(functools.partial(self._publish_completion, self.channel, note, job_props))

    def _hand_back(self, d: Delivery, completion: Completion | None, ack: bool, reason: str | None = None) -> None:
        if completion is not None:
            if completion.status == FAILED:
                self.failed += 1
            else:
                self.done += 1
        self._call_in_io_thread(
            functools.partial(self._finish, d, completion, ack, reason), if_connection_lost=self._settled
        )

    def _call_in_io_thread(
        self, callback: Callable[[], None], if_connection_lost: Callable[[], None] | None = None
    ) -> None:
        """Run ``callback`` in the I/O thread; without a connection run ``if_connection_lost`` here.

        The connection may die while a job runs; the broker then requeues the job, and the stored
        result answers the redelivery without transcribing again. A callback that settles a
        delivery passes ``_settled`` so the job still counts as finished.
        """
        conn = self.connection
        try:
            if conn is None:
                raise pika.exceptions.ConnectionWrongStateError("no connection")
            conn.add_callback_threadsafe(callback)
        except pika.exceptions.ConnectionWrongStateError:
            if if_connection_lost is not None:
                if_connection_lost()

    def _finish(self, d: Delivery, completion: Completion | None, ack: bool, reason: str | None = None) -> None:
        """I/O thread: publish the completion with confirms, then ack (or dead-letter)."""
        try:
            if d.channel is not self.channel or not d.channel.is_open:
                return  # delivered on a connection that is gone: it is back in the queue
            if completion is not None:
                body, props = self._publish_result(d.channel, completion, d.props)
            if ack:
                d.channel.basic_ack(d.tag)
            else:
                self._dead_letter(d, reason or "rejected")
            if completion is not None and d.props.reply_to:
                # After the ack, and after a round trip that proves the broker has it: a reply that
                # costs the connection cannot make the broker hand the job out again.
                d.channel.basic_qos(prefetch_count=self.cfg.broker.prefetch)
                self._reply_to_job(d.props, body, props)
        finally:
            self._settled()

    def _requeue(self, d: Delivery, reason: str) -> None:
        """I/O thread: hand a job that hit an unexpected error back to the broker.

        Started attempts are counted on disk, so a job that keeps failing ends as attempts_exhausted;
        one that fails before that (results_dir unwritable) meets the broker's delivery limit.
        """
        try:
            if d.channel is self.channel and d.channel.is_open:
                d.channel.basic_nack(d.tag, requeue=True)
                self.log.warning("job returned to the queue after: %s", reason)
        finally:
            self._settled()

    def _dead_letter(self, d: Delivery, reason: str) -> None:
        """Move a job to the dead-letter queue with the reason in its headers, then ack it
        (the confirm comes before the ack, so the job is never lost)."""
        try:
            broker.park(d.channel, broker.dead_letter_queue(self.cfg.broker), d.body, d.props, reason, self.name)
        except pika.exceptions.UnroutableError:
            d.channel.basic_reject(d.tag, requeue=False)  # no dead-letter queue: the broker's DLX decides
            return
        d.channel.basic_ack(d.tag)

    def _publish_completion(self, ch: Any, completion: Completion, job_props: pika.BasicProperties | None) -> None:
        body, props = self._publish_result(ch, completion, job_props)
        self._reply_to_job(job_props, body, props)

    def _publish_result(
        self, ch: Any, completion: Completion, job_props: pika.BasicProperties | None
    ) -> tuple[bytes, pika.BasicProperties]:
        """Publish to the result queue (confirmed); returns what a reply to the job's reply_to carries."""
        body = completion.to_json()
        correlation_id = (job_props.correlation_id if job_props else None) or completion.task_id
        props = broker.properties(correlation_id=correlation_id, message_id=f"{completion.task_id}:{completion.status}")
        broker.publish(ch, self.cfg.broker.result_queue, body, props)
        return body, props

    def _reply_to_job(self, job_props: pika.BasicProperties | None, body: bytes, props: pika.BasicProperties) -> None:
        reply_to = job_props.reply_to if job_props else None
        if reply_to and reply_to != self.cfg.broker.result_queue:
            self._reply(reply_to, body, props)

    def _reply(self, reply_to: str, body: bytes, props: pika.BasicProperties) -> None:
        """Best effort copy to the job's reply_to, on a channel of its own.

        The producer chooses reply_to, so it is hostile input: a queue that refuses publishes or
        a bad ``amq.rabbitmq.reply-to`` name may close the channel it is sent on. That must not
        take the job channel (and its unacked delivery) with it, nor hold up the ack.
        """
        refused = broker.refuse_reply_to(self.cfg.broker, reply_to)
        if refused:
            self.log.warning("not replying to %r: %s", reply_to, refused)
            return
        try:
            if self.reply_channel is None or not self.reply_channel.is_open:
                self.reply_channel = self.connection.channel()
            broker.publish(self.reply_channel, reply_to, body, props, mandatory=False)
            self.reply_channel.basic_qos(prefetch_count=1)  # a round trip: what the reply cost shows here
        except (pika.exceptions.ChannelError, pika.exceptions.ChannelClosed) as e:
            self.log.warning("could not reply to %r: %s", reply_to, broker.reason(e))
            self.reply_channel = None
        except pika.exceptions.ConnectionClosedByBroker as e:
            raise ReplyClosedConnection(reply_to, e) from None

    def _settled(self) -> None:
        with self.cond:
            self.inflight -= 1
            idle = self.inflight == 0
        if idle:
            if self.stopping:
                state = WorkerState.DRAINING
            elif self.report.current.broker is BrokerState.OK:
                state = WorkerState.IDLE
            else:  # a job that ends while the broker is gone leaves the worker reconnecting, not idle
                state = WorkerState.CONNECTING
            self.report.send(state=state, task=None, since=None, deadline=None, done=self.done, failed=self.failed)
            self._title(state.value)
        else:
            self.report.send(done=self.done, failed=self.failed)
