"""The job thread: takes one delivery at a time, runs the pipeline on it, and hands the outcome to
the I/O thread to publish and settle. It never touches a channel (pika's are not thread-safe):
everything it sends goes through the session's handoffs, each with a fallback that settles the
delivery should the connection go first. It ends when the delivery queue is closed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pika

from whisperd import amqp_guard, broker
from whisperd.config import Config, job_deadline_s
from whisperd.contract import FAILED, PROCESSING, Completion, ErrorCode, Job, peek_task_id
from whisperd.deliveries import Deliveries, Delivery
from whisperd.logs import Labelled
from whisperd.publisher import Publisher
from whisperd.reporting import JobReport, WorkerState
from whisperd.session import BrokerSession
from whisperd.worker_status import WorkerStatus

if TYPE_CHECKING:
    from whisperd.pipeline import Outcome  # numpy and the media stack: loaded with the model, not before

REQUEUE_DELAY_S = 1.0  # after an unexpected error: a failure that repeats must not spin through the queue
PROGRESS_INTERVAL_S = 5.0  # processing events with events.progress: at most one per this many seconds


class Jobs:
    """The job thread's loop and its counts (``done``, ``failed``: read by the I/O thread)."""

    def __init__(
        self,
        cfg: Config,
        worker: str,
        log: Labelled,
        deliveries: Deliveries,
        session: BrokerSession,
        publisher: Publisher,
        status: WorkerStatus,
        settled: Callable[[], None],
        requeue_delay_s: float = REQUEUE_DELAY_S,
    ) -> None:
        self.cfg = cfg
        self.worker = worker
        self.log = log
        self.deliveries = deliveries
        self.session = session
        self.publisher = publisher
        self.status = status
        self.settled = settled  # one delivery is done with: in whichever thread settled it
        self.requeue_delay_s = requeue_delay_s
        self.done = 0
        self.failed = 0
        self.seen = 0
        self.progress_sent = 0.0  # when the last processing event went out (monotonic)

    def loop(self, pipeline: Any) -> None:
        """Every job, until the delivery queue is closed."""
        while (delivery := self.deliveries.take()) is not None:
            try:
                self._handle(pipeline, delivery)
            except Exception as e:  # ENOSPC, EACCES, MemoryError, a bug: never leave the delivery unsettled
                self.log.exception("unexpected error handling a job; returning it to the queue")
                time.sleep(self.requeue_delay_s)  # a failure that repeats must not spin through the queue
                self.session.call(
                    functools.partial(self._then_settle, self.publisher.requeue, delivery, broker.reason(e)),
                    if_connection_lost=self.settled,
                )

    def _handle(self, pipeline: Any, d: Delivery) -> None:
        task_id = peek_task_id(d.body, self.cfg.limits.max_job_bytes)
        # The deadline runs from now, decoding included; it grows once the audio's length is known.
        self.status.send(
            state=WorkerState.BUSY, task=task_id, since=time.time(), deadline=job_deadline_s(self.cfg, 0.0)
        )
        self.session.nudge(self.status.show_title)  # only the main thread sets the title: now, not at its next turn
        if why := amqp_guard.undecodable(d.props.headers):
            outcome = pipeline.refuse(d.body, ErrorCode.INVALID_HEADERS, f"the message's AMQP headers: {why}")
        else:
            outcome = pipeline.run(
                d.body,
                on_started=functools.partial(self._on_started, job_props=d.props),
                on_progress=functools.partial(self._on_progress, job_props=d.props),
            )
        self._report(outcome, pipeline.diarizer_loaded)
        self._hand_back(d, outcome)

    def _report(self, outcome: Outcome, diarizer: bool = False) -> None:
        """The job's outcome for the supervisor's metrics; ``seq`` tells a new job from a repeated report.

        ``diarizer``: whether the worker holds the diarizer now (the first job that asks loads it)."""
        self.seen += 1
        c = outcome.completion
        if c is None:
            job = JobReport(self.seen, "rejected", "invalid_job", outcome.reused)
        else:
            code = (c.error or {}).get("code")
            job = JobReport(self.seen, c.status, code, outcome.reused, c.processing_s, c.duration_s)
        self.status.send(job=job, diarizer=diarizer)

    def _hand_back(self, d: Delivery, outcome: Outcome) -> None:
        if outcome.completion is not None:
            if outcome.completion.status == FAILED:
                self.failed += 1
            else:
                self.done += 1
        finish = functools.partial(self.publisher.finish, d, outcome.completion, outcome.ack, outcome.reason)
        self.session.call(functools.partial(self._then_settle, finish), if_connection_lost=self.settled)

    def _then_settle(self, callback: Callable[..., None], *args: Any) -> None:
        """I/O thread: run ``callback``, then settle its delivery however it went."""
        try:
            callback(*args)
        finally:
            self.settled()

    # -- progress notes ---------------------------------------------------------------------------

    def _on_started(self, job: Job, duration_s: float, job_props: pika.BasicProperties | None = None) -> None:
        self.status.send(deadline=job_deadline_s(self.cfg, duration_s), duration_s=duration_s)
        self.progress_sent = time.monotonic()
        if self.cfg.events.progress:
            self._send_progress(job, duration_s, 0.0, job_props)

    def _on_progress(
        self, job: Job, duration_s: float, fraction: float, job_props: pika.BasicProperties | None = None
    ) -> None:
        """A ``processing`` event with the share done, at most every PROGRESS_INTERVAL_S and not at the end
        (the completion follows at once)."""
        if not self.cfg.events.progress or fraction >= 1.0:
            return
        if time.monotonic() - self.progress_sent >= PROGRESS_INTERVAL_S:
            self.progress_sent = time.monotonic()
            self._send_progress(job, duration_s, fraction, job_props)

    def _send_progress(
        self, job: Job, duration_s: float, fraction: float, job_props: pika.BasicProperties | None
    ) -> None:
        note = Completion(
            task_id=job.task_id,
            status=PROCESSING,
            duration_s=round(duration_s, 3),
            worker=self.worker,
            progress=round(fraction, 3),
            audio_done_s=round(fraction * duration_s, 1),
        )
        # Also to reply_to, with the job's correlation_id: an RPC-style caller sees "processing" too.
        self.session.call(functools.partial(self.publisher.note, note, job_props))
