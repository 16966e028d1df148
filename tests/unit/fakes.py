"""Stand-ins for pika's objects and the transcriber, the only fakes of the unit tier.

They keep the real signatures (test_fakes.py checks them against pika, Pipeline and Transcriber),
so a call the worker or the pipeline makes with the wrong arguments fails here as it would there.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pika
import pika.exceptions
import pika.spec

from whisperd.contract import DONE, Completion, ErrorCode, Job, JobError, parse_job, peek_task_id
from whisperd.pipeline import Outcome
from whisperd.transcript import Segment, Transcript

IO_WAIT_S = 0.02  # how long one fake I/O-loop turn waits for a callback (pika's waits up to time_limit)
LOOP_DEADLINE_S = 10.0  # a fake connection whose loop runs longer than this fails the test


@dataclass
class Call:
    """One channel method call, with the thread that made it."""

    name: str
    args: dict[str, Any]
    thread: str = field(default_factory=lambda: threading.current_thread().name)


class FakeChannel:
    """pika's BlockingChannel as far as the worker uses it: records each call and its thread.

    A publish to a queue in ``unroutable`` raises UnroutableError, as a confirmed mandatory
    publish that no queue took does. A closed channel refuses calls, as pika's does.
    """

    def __init__(self, connection: FakeConnection | None = None) -> None:
        self.connection = connection
        self.is_open = True
        self.calls: list[Call] = []
        self.unroutable: set[str] = set()
        self.consumer: Callable[..., None] | None = None
        self.consumer_tag: str | None = None
        self.prefetch = 0
        self.unacked: set[int] = set()
        self._next_tag = 0

    # -- what tests read ------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def of(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    def published(self) -> list[tuple[str, dict[str, Any] | bytes, pika.BasicProperties]]:
        """(routing key, body as JSON when it is JSON, properties) of every publish, in order."""
        out = []
        for c in self.of("basic_publish"):
            body = c.args["body"]
            try:
                body = json.loads(body)
            except ValueError:
                pass
            out.append((c.args["routing_key"], body, c.args["properties"]))
        return out

    def deliver(self, body: bytes, props: pika.BasicProperties | None = None) -> int:
        """The broker hands the consumer a message (in the calling thread); returns its delivery tag."""
        assert self.consumer is not None, "nobody consumes on this channel"
        self._next_tag += 1
        self.unacked.add(self._next_tag)
        method = pika.spec.Basic.Deliver(consumer_tag=self.consumer_tag, delivery_tag=self._next_tag)
        self.consumer(self, method, props or pika.BasicProperties(), body)
        return self._next_tag

    # -- pika's BlockingChannel -----------------------------------------------------------------

    def _record(self, name: str, **args: Any) -> None:
        if not self.is_open:
            raise pika.exceptions.ChannelWrongStateError("Channel is closed.")
        self.calls.append(Call(name, args))

    def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties | None = None,
        mandatory: bool = False,
    ) -> None:
        self._record("basic_publish", exchange=exchange, routing_key=routing_key, body=body, properties=properties,
                     mandatory=mandatory)  # fmt: skip
        if mandatory and routing_key in self.unroutable:
            raise pika.exceptions.UnroutableError([])

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        self._record("basic_ack", delivery_tag=delivery_tag, multiple=multiple)
        self.unacked.discard(delivery_tag)

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False, requeue: bool = True) -> None:
        self._record("basic_nack", delivery_tag=delivery_tag, multiple=multiple, requeue=requeue)
        self.unacked.discard(delivery_tag)

    def basic_reject(self, delivery_tag: int = 0, requeue: bool = True) -> None:
        self._record("basic_reject", delivery_tag=delivery_tag, requeue=requeue)
        self.unacked.discard(delivery_tag)

    def basic_qos(self, prefetch_size: int = 0, prefetch_count: int = 0, global_qos: bool = False) -> None:
        self._record("basic_qos", prefetch_count=prefetch_count)
        self.prefetch = prefetch_count

    def basic_consume(
        self,
        queue: str,
        on_message_callback: Callable[..., None],
        auto_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str | None = None,
        arguments: dict[str, Any] | None = None,
    ) -> str:
        self._record("basic_consume", queue=queue, arguments=arguments)
        self.consumer, self.consumer_tag = on_message_callback, consumer_tag or "ctag-1"
        return self.consumer_tag

    def basic_cancel(self, consumer_tag: str) -> list[Any]:
        self._record("basic_cancel", consumer_tag=consumer_tag)
        self.consumer = None
        return []

    def confirm_delivery(self) -> None:
        self._record("confirm_delivery")

    def queue_declare(
        self,
        queue: str,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> Any:
        self._record("queue_declare", queue=queue, passive=passive, arguments=arguments)
        return SimpleNamespace(method=SimpleNamespace(queue=queue, message_count=0, consumer_count=0))

    def close(self, reply_code: int = 0, reply_text: str = "Normal shutdown") -> None:
        self.is_open = False


class FakeConnection:
    """pika's BlockingConnection as far as the worker uses it.

    ``add_callback_threadsafe`` queues the callback (the job thread's only way into the I/O
    thread) and raises ConnectionWrongStateError once the connection is closed or lost, as pika
    does. Nothing runs a queued callback but ``run_callbacks`` or ``process_data_events``, called
    by the test or by the worker's own loop: that thread is the I/O thread.

    For the worker's loop (``Worker._serve``) it also plays the broker: ``ready`` jobs go to the
    consumer one at a time, as far as the channel's prefetch allows; ``on_poll(conn)`` runs at the
    start of every loop turn, for a test to act (send SIGTERM, drop the connection) at its moment.
    """

    def __init__(self, server_version: str = "3.13.7") -> None:
        self.is_open = True
        self.channels: list[FakeChannel] = []
        self.ready: deque[tuple[bytes, pika.BasicProperties]] = deque()
        self.on_poll: Callable[[FakeConnection], None] | None = None
        # What broker.server_version reads: pika's private attribute, there being no public one.
        self._impl = SimpleNamespace(server_properties={"version": server_version.encode()})
        self._callbacks: list[Callable[[], None]] = []
        self._cond = threading.Condition()
        self._deadline: float | None = None

    # -- what tests use -------------------------------------------------------------------------

    @property
    def consuming(self) -> FakeChannel:
        """The channel the worker consumes on (its job channel)."""
        return next(ch for ch in self.channels if ch.consumer_tag is not None)

    def queued(self) -> int:
        with self._cond:
            return len(self._callbacks)

    def wait_for_callbacks(self, n: int = 1, timeout: float = 5.0) -> None:
        """Until the job thread has queued ``n`` callbacks for the I/O thread."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._callbacks) >= n, timeout):
                raise AssertionError(f"expected {n} callbacks for the I/O thread within {timeout} s, got "
                                     f"{len(self._callbacks)}")  # fmt: skip

    def run_callbacks(self) -> int:
        """Run what the job thread queued, in the calling thread, as pika's I/O loop does; how many ran."""
        with self._cond:
            todo, self._callbacks = self._callbacks, []
        for callback in todo:
            callback()
        return len(todo)

    def lose(self) -> None:
        """The connection dies under the worker (the broker went away): nothing is closed politely."""
        self.is_open = False
        for ch in self.channels:
            ch.is_open = False

    # -- pika's BlockingConnection --------------------------------------------------------------

    def add_callback_threadsafe(self, callback: Callable[..., None]) -> None:
        with self._cond:
            if not self.is_open:
                raise pika.exceptions.ConnectionWrongStateError(
                    "BlockingConnection.add_callback_threadsafe() called on closed or closing connection."
                )
            self._callbacks.append(callback)
            self._cond.notify_all()

    def channel(self, channel_number: int | None = None) -> FakeChannel:
        if not self.is_open:
            raise pika.exceptions.ConnectionWrongStateError("Connection is closed.")
        ch = FakeChannel(self)
        self.channels.append(ch)
        return ch

    def process_data_events(self, time_limit: float | None = 0) -> None:
        """One turn of the I/O loop: the test's hook, queued callbacks, then at most one delivery;
        waits a moment for a callback when there was nothing to do."""
        now = time.monotonic()
        self._deadline = self._deadline or now + LOOP_DEADLINE_S
        if now > self._deadline:
            raise AssertionError(f"the worker's I/O loop still ran after {LOOP_DEADLINE_S} s")
        if self.on_poll is not None:
            self.on_poll(self)
        if not self.is_open:
            raise pika.exceptions.StreamLostError("Transport indicated EOF")
        if self.run_callbacks():
            return
        ch = next((c for c in self.channels if c.consumer is not None and c.is_open), None)
        if ch is not None and self.ready and len(ch.unacked) < max(ch.prefetch, 1):
            ch.deliver(*self.ready.popleft())
            return
        with self._cond:
            self._cond.wait_for(lambda: self._callbacks, min(time_limit or 0, IO_WAIT_S))
        self.run_callbacks()

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> None:
        self.lose()


def done_completion(task_id: str, worker: str = "host:worker-1:1", text: str = "hello") -> Completion:
    """A ``done`` completion as Pipeline builds one."""
    return Completion(task_id=task_id, status=DONE, text=text, language="en", duration_s=11.0, processing_s=0.2,
                      results={"txt": f"/results/{task_id}.txt"}, worker=worker)  # fmt: skip


class FakePipeline:
    """Stands in for whisperd.pipeline.Pipeline in the worker: answers each job with a real Outcome
    (``outcome``, else a done completion for the body's task_id), calling ``on_started`` and
    ``on_progress`` as the real one does. ``gate`` holds the job until the test sets it; ``error``
    is raised instead of answering (a bug, ENOSPC: what the worker must survive)."""

    def __init__(
        self,
        outcome: Outcome | None = None,
        gate: threading.Event | None = None,
        error: BaseException | None = None,
        duration_s: float = 11.0,
    ) -> None:
        self.outcome = outcome
        self.gate = gate
        self.error = error
        self.duration_s = duration_s
        self.threads = 1
        self.diarizer_loaded = False
        self.bodies: list[bytes] = []
        self.refused: list[tuple[bytes, str, str]] = []
        self.started = threading.Event()

    def set_threads(self, threads: int) -> None:
        self.threads = threads

    def run(
        self,
        body: bytes,
        on_started: Callable[[Job, float], None] | None = None,
        on_progress: Callable[[Job, float, float], None] | None = None,
    ) -> Outcome:
        self.bodies.append(body)
        self.started.set()
        if self.gate is not None and not self.gate.wait(5):
            raise AssertionError("the test never let the job finish")
        if self.error is not None:
            raise self.error
        if self.outcome is not None:
            return self.outcome
        job = parse_job(body)
        if on_started is not None:
            on_started(job, self.duration_s)
        if on_progress is not None:
            on_progress(job, self.duration_s, 0.5)
        return Outcome(done_completion(job.task_id))

    def refuse(self, body: bytes, code: str, message: str) -> Outcome:
        self.refused.append((body, code, message))
        failure = Completion.failure(JobError(code, message, peek_task_id(body)), "host:worker-1:1")
        return Outcome(failure if failure.task_id else None, ack=False, reason=f"{code}: {message}")


class FakeTranscriber:
    """Stands in for whisperd.transcriber.Transcriber in the pipeline: what Pipeline uses of it
    (``pipeline.Transcribing``: ``check``, ``transcribe``, ``threads``), answering ``text`` for any
    audio as one segment. ``error`` is raised by ``transcribe`` (a model failing on an input)."""

    name = "fake"
    device = "cpu"

    def __init__(self, text: str = "hello", error: Exception | None = None, speech_s: float | None = None) -> None:
        self.text = text
        self.error = error
        self.speech_s = speech_s
        self.threads = 1
        self.calls: list[tuple[np.ndarray, Job]] = []

    def check(self, job: Job) -> None:
        if job.language not in (None, "en", "es"):
            raise JobError(ErrorCode.UNSUPPORTED_LANGUAGE, f"language {job.language!r} is not supported", job.task_id)

    def transcribe(
        self, audio: np.ndarray, job: Job, settings: Any = None, progress: Callable[[float], None] | None = None
    ) -> Transcript:
        self.calls.append((audio, job))
        if self.error is not None:
            raise self.error
        if progress is not None:
            progress(0.5)
            progress(1.0)
        end = round(len(audio) / 16000, 2)
        segment = Segment(id=0, seek=0, start=0.0, end=end, text=f" {self.text}", tokens=(), temperature=0.0,
                          avg_logprob=-0.1, compression_ratio=1.2, no_speech_prob=0.01)  # fmt: skip
        return Transcript(f" {self.text}", job.language or "en", (segment,), self.speech_s)
