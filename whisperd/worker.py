"""A worker process: one pika connection, one loaded model, one job at a time.

Shape from pika's basic_consumer_threaded example: the main thread owns the connection and
runs its I/O loop (so broker heartbeats keep flowing during long transcriptions), a job thread
transcribes, and hands the result back with ``connection.add_callback_threadsafe``. The I/O
thread then publishes the completion with publisher confirms and only then acks the job.

Signals: SIGTERM drains (stop consuming, finish and ack the job in hand, exit 0); SIGQUIT exits
at once (the unacked job goes back to the queue); SIGINT and SIGHUP are the supervisor's.

The parts, each with its own state (as Celery's consumer bootsteps): ``session`` (the connection,
its channels and handoffs, outages), ``deliveries`` (what waits and what is in flight), ``jobs``
(the job thread), ``publisher`` (what goes to the broker, in the I/O thread) and ``status`` (the
report and the process title). The Worker composes them: process life and the I/O loop.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pika
import pika.exceptions
from setproctitle import setproctitle

from whisperd import broker, decoder
from whisperd.config import Config, diarize_cache_dir
from whisperd.deliveries import Deliveries, Delivery
from whisperd.jobs import REQUEUE_DELAY_S, Jobs
from whisperd.lifecycle import WorkerExit
from whisperd.logs import Labelled
from whisperd.publisher import Publisher, ReplyClosedConnection
from whisperd.reporting import BrokerState, Reporter, WorkerState
from whisperd.session import BrokerSession, Connect
from whisperd.worker_status import WorkerStatus

DEPTH_EVERY_S = 5.0  # how often a worker reports queue depths (for `whisperd status` and metrics)


class Worker:
    """``connect``, ``load``, ``set_title`` and ``requeue_delay_s`` are the real ones unless a test
    passes its own (a fake connection, a fake pipeline, a list of titles, no delay)."""

    def __init__(
        self,
        cfg: Config,
        slot: int,
        threads: int,
        sock: socket.socket | None = None,
        device: str | None = None,
        *,
        connect: Connect = broker.connect,
        load: Callable[[], Any] | None = None,
        set_title: Callable[[str], None] = setproctitle,
        requeue_delay_s: float = REQUEUE_DELAY_S,
    ):
        self.cfg = cfg
        self.slot = slot
        self.initial_threads = threads  # the loaded pipeline keeps the count from then on
        self.device = device
        self.name = f"{socket.gethostname()}:worker-{slot}:{os.getpid()}"
        self.label = f"worker {slot}"
        self.log = Labelled(logging.getLogger("whisperd.worker"), self.label)
        self.status = WorkerStatus(Reporter(sock), slot, set_title)
        self.load = load or self._load
        self.pipeline: Any = None
        self.stopping = False
        self.recycling = False  # stopping after workers.max_jobs, not because it was asked to
        self.deliveries = Deliveries()
        self.session = BrokerSession(cfg, self.label, slot, self.log, connect)
        self.publisher = Publisher(cfg.broker, self.session, self.name, self.log)
        self.jobs = Jobs(cfg, self.name, self.log, self.deliveries, self.session, self.publisher, self.status,
                         self._settled, requeue_delay_s)  # fmt: skip
        self.max_jobs = (
            cfg.workers.max_jobs + random.randint(0, cfg.workers.max_jobs_jitter) if cfg.workers.max_jobs else 0
        )

    # -- process life -------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.handle_term)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.status.send(pid=os.getpid(), slot=self.slot, state=WorkerState.BOOTING, done=0, failed=0,
                         broker=BrokerState.CONNECTING)  # fmt: skip
        self.status.show_title()
        loaded: Future[Any] = Future()
        threading.Thread(target=self._job_thread, args=(loaded,), name="jobs", daemon=True).start()
        try:
            try:
                self.pipeline = loaded.result()
            except Exception as e:
                self.log.error("cannot load model %r: %s", self.cfg.model.name, e)
                self.status.send(state=WorkerState.BOOT_FAILED, error=f"cannot load model {self.cfg.model.name!r}: {e}")
                return WorkerExit.BOOT_ERROR
            return self._serve_forever()
        finally:
            self.deliveries.close()
            decoder.shared().close()

    def _job_thread(self, loaded: Future[Any]) -> None:
        """Load, warm up and run every job in this one thread.

        OpenMP gives each thread that computes its own pool of torch threads: warming up in the
        main thread and transcribing here would leave two pools competing for the same cores
        (measured ~30 % slower per job on 2 cores, see bench/RESULTS.md).
        """
        try:
            pipeline = self.load()
        except Exception as e:
            loaded.set_exception(e)
            return
        loaded.set_result(pipeline)
        self.jobs.loop(pipeline)

    def _load(self) -> Any:
        from whisperd import media
        from whisperd.diarizer import Diarizer
        from whisperd.pipeline import Pipeline
        from whisperd.results import ResultStore
        from whisperd.transcriber import Transcriber

        started = time.monotonic()
        helper = decoder.shared()  # started here, in the job thread that decodes, while the model loads
        helper.timeout_s = media.decode_timeout_s(self.cfg)
        helper.start()
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
        diarizer = Diarizer(diarize_cache_dir(self.cfg), transcriber.threads)
        if self.cfg.diarize.preload:
            diarizer.load()
        self.status.send(device=transcriber.device, diarizer=diarizer.loaded)
        return Pipeline(self.cfg, transcriber, store, self.name, self.log, diarizer)

    def handle_term(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def handle_quit(self, signum: int, frame: Any) -> None:
        os._exit(WorkerExit.STOPPED)

    # -- the I/O loop -------------------------------------------------------------------------

    def _serve_forever(self) -> int:
        while not self.stopping:
            try:
                self._serve()
            except broker.TopologyMismatch as e:
                self.log.error("%s", e)
                self.status.send(state=WorkerState.BOOT_FAILED, error=str(e))
                return WorkerExit.BOOT_ERROR
            except ReplyClosedConnection as e:
                self.log.warning("%s; reconnecting", e)
            except broker.AUTH_ERRORS as e:
                reason = f"broker refused the credentials in broker.url ({type(e).__name__})"
                if not self.session.ever_connected:
                    self.log.error("%s", reason)
                    self.status.send(state=WorkerState.BOOT_FAILED, error=reason)
                    return WorkerExit.BOOT_ERROR
                self._outage(reason)
            except (pika.exceptions.AMQPError, OSError) as e:
                self._outage(broker.reason(e))
            finally:
                self.session.drop()
        self._wait_idle()
        self.deliveries.close()
        self.log.info("stopped after %d jobs", self.jobs.done + self.jobs.failed)
        return WorkerExit.RECYCLED if self.recycling else WorkerExit.STOPPED

    def _outage(self, reason: str) -> None:
        """The broker cannot be used: report it, settle what the lost connection never ran, say why, back off."""
        self.session.unreachable()
        self.status.send(broker=BrokerState.UNREACHABLE, state=WorkerState.CONNECTING)
        self.session.drop()  # before the backoff: a handoff the lost connection never ran settles now
        self.status.show_title()
        self._sleep(self.session.retry_after(reason))

    def _serve(self) -> None:
        """Consume until asked to stop; raises on connection loss."""
        tag: str | None = self.session.open(self._on_message, between=self._report)
        idle = self.deliveries.inflight == 0
        self.status.send(broker=BrokerState.OK, state=WorkerState.IDLE if idle else WorkerState.BUSY)
        self.status.show_title()
        last_report = last_depth = 0.0
        while True:
            self.session.connection.process_data_events(time_limit=1)
            self.status.show_title()
            now = time.monotonic()
            if now - last_report >= 1:
                self._apply_settings()
                self.status.send()
                last_report = now
            if now - last_depth >= DEPTH_EVERY_S:
                self.status.send(queue=self.session.queue_depths())
                last_depth = now
            handled = self.jobs.done + self.jobs.failed
            if self.max_jobs and handled >= self.max_jobs and not self.stopping:
                self.log.info("recycling after %d jobs (workers.max_jobs)", handled)
                self.stopping = self.recycling = True
            if self.stopping:
                if tag is not None:
                    self.session.channel.basic_cancel(tag)
                    tag = None
                    self.deliveries.requeue_pending()
                    self.status.send(state=WorkerState.DRAINING)
                    self.status.show_title()
                if self.deliveries.inflight == 0:
                    return

    def _on_message(self, ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        self.deliveries.put(Delivery(ch, method.delivery_tag, props, body))

    def _settled(self) -> None:
        """One delivery is done with (in the I/O thread, or wherever its handoff's fallback ran)."""
        if self.deliveries.settle() == 0:
            if self.stopping:
                state = WorkerState.DRAINING
            elif self.session.state is BrokerState.OK:
                state = WorkerState.IDLE
            else:  # a job that ends while the broker is gone leaves the worker reconnecting, not idle
                state = WorkerState.CONNECTING
            done, failed = self.jobs.done, self.jobs.failed
            self.status.send(state=state, task=None, since=None, deadline=None, done=done, failed=failed)
        else:
            self.status.send(done=self.jobs.done, failed=self.jobs.failed)

    def _apply_settings(self) -> None:
        for settings in self.status.receive():
            if self.pipeline.threads != settings.threads:
                self.log.info("now using %d threads", settings.threads)
                self.pipeline.set_threads(settings.threads)

    def _report(self) -> None:
        """Send the report (the supervisor's heartbeat) and show the title it asks for."""
        self.status.send()
        self.status.show_title()

    def _sleep(self, seconds: float) -> None:
        """Sleep in short steps, reporting, so a stop or the supervisor's watchdog is never starved."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            self._apply_settings()
            self._report()

    def _wait_idle(self) -> None:
        """With no broker to ack to, still let the job in hand finish writing its result."""
        self.deliveries.forget_pending()
        while not self.deliveries.wait_idle(0.2):
            self._report()
