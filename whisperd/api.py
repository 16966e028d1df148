"""``whisperd api``: an optional reference HTTP API for sites without their own producer.

POST /transcriptions streams the upload under media_root and queues a job; a background thread
consumes the result queue and records every completion; GET /transcriptions/{id} answers from
those records. Each task is one small JSON file in ``api.state_dir``, written atomically and
fsynced *before* the completion is acked, so nothing is lost when the API restarts: completions
that arrive while it is down wait in the (durable) result queue and are read on the next start.
A file per task needs no database server and is plenty for a reference service; a site with
heavy traffic would keep the same records in its own database.

Every request is treated as hostile: the multipart body is parsed here as it streams in (not by
starlette, which spools every part to a temp file before a handler can look at it), so an
oversized or malformed upload is refused before more than ``limits.max_file_mb`` reaches the disk.

Imports FastAPI only here; install with ``pip install 'whisperd[api]'``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import resource
import socket
import stat
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO
from urllib.parse import urlsplit

import pika
import pika.exceptions
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette._utils import parse_host_header
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from whisperd import amqp_guard, broker
from whisperd.config import ApiConfig, Config, ConfigError
from whisperd.contract import DONE, FAILED, FORMATS, PROCESSING, TASK_ID_RE, Completion, JobError, job_body
from whisperd.results import atomic_write, fsync_dir
from whisperd.retry import Backoff, close_quietly

log = logging.getLogger("whisperd.api")

QUEUED = "queued"
# What the API's users see (the .NET API's vocabulary); ``state`` carries the English name.
LABELS = {QUEUED: "En proceso", PROCESSING: "En curso", DONE: "Completado", FAILED: "Error"}
FINAL = (DONE, FAILED)
SUFFIX_RE = re.compile(r"\.[A-Za-z0-9]{1,8}")
PUBLISH_RETRY_S = 30.0  # how long an upload's job is offered to the cluster's nodes before a 503

# The form: one file part named "file" and at most these plain fields, each at most FIELD_BYTES.
FIELDS = ("language", "formats", "word_timestamps")
FIELD_BYTES = 1024
MAX_PARTS = 1 + len(FIELDS)
PART_HEADERS = 8  # headers per part
PART_HEADER_BYTES = 2048  # per header line
# What a body may carry on top of the file: every part's headers, the fields and the boundaries.
FORM_OVERHEAD = 64 * 1024
FILENAME_CHARS = 255
WRITE_BYTES = 1 << 20  # file data is written in pieces of about this size, off the event loop
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")

MIN_TOKEN_CHARS = 16
# A completion is a few kB of text per minute of audio; anything bigger is not one of ours.
MAX_COMPLETION_BYTES = 8 << 20
HISTORY = 20  # state changes kept per task
# Completions are recorded one at a time anyway; a small prefetch also bounds the memory that
# oversized messages (up to the broker's max_message_size each) can take before they are rejected.
PREFETCH = 2
# An upload nobody owns (the API died mid-upload or before recording its task) is removed after this.
ORPHAN_AGE_S = 3600.0
UPLOAD_RE = re.compile(r"(?P<task_id>[0-9a-f]{32})(\.[A-Za-z0-9]{1,8})?")
PARTIAL_RE = re.compile(r"\.(?P<task_id>[0-9a-f]{32})\.upload")

# Uploads: api.upload_idle_timeout_s bounds each read; these bound the whole upload, so a client
# trickling a byte every few seconds cannot hold a slot (candidates for config keys).
UPLOAD_DEADLINE_S = 3600.0  # no upload takes longer (2 GiB needs 600 kB/s)
UPLOAD_GRACE_S = 30.0  # then at least UPLOAD_MIN_RATE bytes per second on average, from the start
UPLOAD_MIN_RATE = 16 * 1024
UPLOADS_PER_CLIENT = 0  # concurrent uploads per client address; 0 = half of api.max_concurrent_uploads
# Jobs wait for the one publisher thread; more than this many waiting get 503 at once.
MAX_PENDING_PUBLISHES = 16

# Connections: uvicorn accepts without limit and waits forever for a request head.
HEAD_TIMEOUT_S = 10.0  # a connection sends a complete request head this soon after it opens or goes idle
FD_RESERVE = 128  # descriptors kept for the broker, the store, uploads and logs
# asyncio accepts up to ``backlog`` connections in one go before the guard sees any of them, and
# the ones the guard pushes out close a loop iteration later: under a flood about two batches are
# open on top of the limit (measured: 384 + 253 fds with a backlog of 128), so three are kept free.
BACKLOG = 128
IN_FLIGHT_BATCHES = 3
FDS_PER_CONNECTION = 2  # its socket, and a result file it may be reading
MIN_CONNECTIONS, MAX_CONNECTIONS = 16, 1024
WANTED_FDS = 65536  # the soft RLIMIT_NOFILE is raised towards the hard one, up to this
SWEEP_S = 1.0

# Host header: on a loopback address only these names (and api.allowed_hosts, once it exists).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ALLOWED_HOSTS: tuple[str, ...] = ()  # names to accept besides those (stands in for api.allowed_hosts)

# Log lines of one kind (logger and message) let through per interval; the rest are counted.
LOG_BURST, LOG_INTERVAL_S = 20, 10.0

# What TaskStore.apply did with an event.
RECORDED, UNCHANGED, LATE, FOREIGN = "recorded", "unchanged", "late", "foreign"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ApiError(Exception):
    """A refused request: an HTTP status, a stable machine-readable ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "detail": message}, status_code=status, headers=headers)


class TaskStore:
    """One JSON record per task in state_dir; the API's only state, safe across restarts."""

    def __init__(self, state_dir: str) -> None:
        self.dir = state_dir
        os.makedirs(state_dir, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, task_id: str) -> str:
        return os.path.join(self.dir, f"{task_id}.json")

    def get(self, task_id: str) -> dict[str, Any] | None:
        try:
            with open(self._path(task_id), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _put(self, record: dict[str, Any]) -> None:
        with atomic_write(self._path(record["task_id"])) as f:
            json.dump(record, f, ensure_ascii=False)

    def create(self, task_id: str, filename: str | None, audio_path: str) -> dict[str, Any]:
        at = now_iso()
        record = {
            "task_id": task_id,
            "state": QUEUED,
            "filename": filename,
            "audio_path": audio_path,
            "submitted_at": at,
            "updated_at": at,
            "history": [{"state": QUEUED, "at": at}],
            "completion": None,
        }
        with self._lock:
            self._put(record)
        return record

    def delete(self, task_id: str) -> None:
        try:
            os.unlink(self._path(task_id))
        except FileNotFoundError:
            pass

    def apply(self, c: Completion) -> tuple[str, dict[str, Any] | None]:
        """Record a completion or a processing event of a task this API submitted.

        Returns what happened and the record: RECORDED; UNCHANGED (a "processing" or the same
        final state again: a redelivery); LATE (another final state for a finished task, e.g. the
        task_id_conflict failure of a direct job reusing its id: a finished task stays as it is);
        FOREIGN (no task of this API: another producer's, or forged; nothing is written).
        """
        assert c.task_id is not None
        with self._lock:
            record = self.get(c.task_id)
            if record is None or not record.get("audio_path"):  # audio_path: set by create() only
                return FOREIGN, None
            if record["state"] in FINAL:
                return (UNCHANGED if c.status in (PROCESSING, record["state"]) else LATE), record
            at = now_iso()
            record.update(state=c.status, updated_at=at)
            record["history"] = [*record["history"], {"state": c.status, "at": at}][-HISTORY:]
            if c.status in FINAL:
                record["completion"] = dataclasses.asdict(c)
                record.pop("progress", None)
            elif c.progress is not None:  # events.progress: how far the worker is
                record["progress"] = {"fraction": c.progress, "audio_done_s": c.audio_done_s,
                                      "duration_s": c.duration_s}  # fmt: skip
            self._put(record)
            return RECORDED, record


class PublishTimeout(pika.exceptions.AMQPError):
    """A job waited for the publisher thread past its deadline (the broker is down or slow)."""


class Publisher:
    """Publishes jobs with confirms over one connection, from a thread of its own.

    When the broker node it is connected to is lost, a publish goes to another node of
    ``broker.urls`` (the upload waits, up to PUBLISH_RETRY_S from its request, instead of failing).
    The thread is not the request threads' pool: during an outage, uploads waiting to publish
    once took all 40 of those and every GET waited behind them (0.01 s became 45 s). At most
    MAX_PENDING_PUBLISHES wait; the next upload gets 503 at once.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pending = 0  # jobs submitted to the thread and not finished (the event loop's thread only)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="publisher")
        # No heartbeat: idle between uploads; a dead connection shows at the next publish.
        self._publisher = broker.ConfirmedPublisher(
            cfg.broker, "whisperd api (publisher)", heartbeat=0, retry_for_s=PUBLISH_RETRY_S
        )

    @property
    def full(self) -> bool:
        """As many jobs wait as may: the broker is down or slow."""
        return self.pending >= MAX_PENDING_PUBLISHES

    async def publish(self, body: bytes, task_id: str) -> None:
        """Return once a broker node confirmed the job; PublishTimeout or pika's error otherwise."""
        if self.full:
            raise PublishTimeout(f"{self.pending} jobs are waiting to be published")
        deadline = time.monotonic() + PUBLISH_RETRY_S
        self.pending += 1
        future = self._executor.submit(self._publish, body, task_id, deadline)
        loop = asyncio.get_running_loop()
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._finished))
        await asyncio.wrap_future(future)

    def _finished(self) -> None:
        self.pending -= 1

    def _publish(self, body: bytes, task_id: str, deadline: float) -> None:
        """The publisher thread: publish unless the request's deadline passed while it waited."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise PublishTimeout(f"waited {PUBLISH_RETRY_S:g} s for the publisher")
        self._publisher.retry_for_s = left
        props = broker.properties(correlation_id=task_id, message_id=task_id)
        self._publisher.publish(self.cfg.broker.job_queue, body, props)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._publisher.close()


def _text(value: Any, name: str) -> str | None:
    """A string field of a completion: None, or text that can be stored as UTF-8."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    value.encode("utf-8")  # a lone surrogate ("\\ud800" in JSON) would fail later, when the record is written
    return value


def _seconds(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    return float(value)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | int) or (isinstance(value, float) and math.isfinite(value))


def parse_completion(body: bytes) -> Completion:
    """A completion from a result-queue message; ValueError (with the reason) for anything else.

    ``Completion.from_json`` bounds the cost and checks the types; the API stores what it reads
    and shows it to users, so it also checks every value; fields it does not know are ignored.
    """
    try:
        c = Completion.from_json(body, MAX_COMPLETION_BYTES)
    except JobError as e:
        raise ValueError(e.message) from None
    if not isinstance(c.task_id, str) or not TASK_ID_RE.fullmatch(c.task_id):
        raise ValueError("task_id is missing or not 1-128 characters of A-Z a-z 0-9 . _ -")
    if c.status not in (PROCESSING, DONE, FAILED):
        raise ValueError(f"status must be {PROCESSING}, {DONE} or {FAILED}")
    if not all(f in FORMATS for f in c.results):
        raise ValueError(f"results must map formats ({', '.join(FORMATS)}) to paths")
    if c.error is not None and not all(_scalar(v) for v in c.error.values()):
        raise ValueError("error must be an object of plain values")
    for field in ("text", "language", "worker"):
        _text(getattr(c, field), field)
    for path in c.results.values():
        _text(path, "results")
    for k, v in (c.error or {}).items():
        _text(k, "error")
        if isinstance(v, str):
            _text(v, f"error.{k}")
    c.duration_s = _seconds(c.duration_s, "duration_s")
    c.processing_s = _seconds(c.processing_s, "processing_s")
    c.audio_done_s = _seconds(c.audio_done_s, "audio_done_s")
    if c.progress is not None and not 0 <= c.progress <= 1:
        raise ValueError("progress must be between 0 and 1")
    return c


class Uploads:
    """The upload directory: where a task's audio lives until its result is in, and no longer."""

    def __init__(self, cfg: Config, store: TaskStore) -> None:
        self.subdir = cfg.api.upload_subdir
        self.dir = os.path.join(cfg.storage.media_root, cfg.api.upload_subdir)
        self.retention_s = cfg.api.upload_retention_s
        self.orphan_age_s = max(ORPHAN_AGE_S, 2 * cfg.api.upload_idle_timeout_s)
        self.store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uploads", daemon=True)

    def start(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def partial_path(self, task_id: str) -> str:
        return os.path.join(self.dir, f".{task_id}.upload")

    def path_of(self, record: dict[str, Any]) -> str | None:
        """The upload of a task the API submitted itself; None for anything else."""
        audio_path = record.get("audio_path")
        if not isinstance(audio_path, str) or os.path.dirname(audio_path) != self.subdir:
            return None
        name = os.path.basename(audio_path)
        return os.path.join(self.dir, name) if UPLOAD_RE.fullmatch(name) else None

    def finished(self, record: dict[str, Any]) -> None:
        """Called once a task's result is recorded: remove its audio now unless it is kept a while."""
        if self.retention_s == 0 and (path := self.path_of(record)):
            self._remove(path, f"task {record['task_id']} is {record['state']}")

    def _remove(self, path: str, why: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("cannot remove upload %s (%s): %s", path, why, e)
            return
        log.debug("removed upload %s: %s", path, why)

    def sweep(self) -> None:
        """Remove finished tasks' uploads past retention, and uploads nobody owns past ORPHAN_AGE_S."""
        now = time.time()
        try:
            entries = list(os.scandir(self.dir))
        except OSError as e:
            log.warning("cannot list uploads in %s: %s", self.dir, e)
            return
        for entry in entries:
            try:
                self._sweep_one(entry, now)
            except (OSError, ValueError) as e:  # one odd entry never stops the sweep
                log.warning("upload %s: %s", entry.path, e)

    def _sweep_one(self, entry: os.DirEntry, now: float) -> None:
        if (m := PARTIAL_RE.fullmatch(entry.name)) is not None:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if age > self.orphan_age_s:  # an upload in progress writes at least every upload_idle_timeout_s
                self._remove(entry.path, f"an upload abandoned {age:.0f} s ago")
            return
        if (m := UPLOAD_RE.fullmatch(entry.name)) is None:
            return  # not one of ours: leave it alone
        record = self.store.get(m["task_id"])
        if record is None:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if age > self.orphan_age_s:
                self._remove(entry.path, f"no task records it, {age:.0f} s old")
        elif record.get("state") in FINAL:
            done_at = datetime.fromisoformat(record["updated_at"]).timestamp()
            if now - done_at >= self.retention_s:
                self._remove(entry.path, f"task {m['task_id']} is {record['state']}")

    def _run(self) -> None:
        interval = min(60.0, max(1.0, self.retention_s / 4)) if self.retention_s else 60.0
        while True:
            self.sweep()
            if self._stop.wait(interval):
                return


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

    def __init__(self, cfg: Config, store: TaskStore, on_final: Callable[[dict[str, Any]], None]) -> None:
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
        if what == RECORDED and record is not None and record["state"] in FINAL:
            self.on_final(record)
        elif what == FOREIGN:
            self.ignored += 1
            level = logging.DEBUG if c.status == PROCESSING else logging.INFO
            log.log(level, "ignoring a %s completion of task %s: not a task of this API", c.status, c.task_id)
        elif what == LATE and record is not None:
            self.ignored += 1
            code = (c.error or {}).get("code")
            log.warning("ignoring a %s completion%s of task %s: it is %s already", c.status,
                        f" ({code})" if code else "", c.task_id, record["state"])  # fmt: skip

    def _park(self, channel: Any, tag: int, props: pika.BasicProperties, body: bytes, why: str) -> None:
        self.rejected += 1
        log.error("parking a message of %s in %s (%d bytes): %s", self.queue, self.parked_queue, len(body), why[:300])
        try:
            broker.park(channel, self.parked_queue, body, props, why, self.name)
        except pika.exceptions.UnroutableError:  # no parked queue (a classic result queue's node set-up)
            channel.basic_reject(tag, requeue=False)
            return
        channel.basic_ack(tag)


def view(record: dict[str, Any], base_url: str) -> dict[str, Any]:
    """A task record as the API shows it."""
    c = record.get("completion") or {}
    task_id = record["task_id"]
    return {
        "task_id": task_id,
        "status": LABELS.get(record["state"], record["state"]),
        "state": record["state"],
        "filename": record.get("filename"),
        "submitted_at": record.get("submitted_at"),
        "updated_at": record.get("updated_at"),
        "text": c.get("text"),
        "language": c.get("language"),
        "duration_s": c.get("duration_s"),
        "processing_s": c.get("processing_s"),
        "error": c.get("error"),
        "results": {fmt: f"{base_url}transcriptions/{task_id}/result.{fmt}" for fmt in c.get("results") or {}},
        "progress": record.get("progress"),
        "history": record.get("history", []),
    }


def load_token(api: ApiConfig) -> str:
    """``api.token`` or the contents of ``api.token_file``; "" when neither is set (no authentication)."""
    if api.token and api.token_file:
        raise ConfigError("api.token and api.token_file: set one of them, not both")
    token = api.token
    if api.token_file:
        try:
            with open(api.token_file, encoding="utf-8") as f:
                mode = os.fstat(f.fileno()).st_mode
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"api.token_file: cannot read {api.token_file}: {type(e).__name__}") from None
        if mode & 0o007:
            raise ConfigError(f"api.token_file: {api.token_file} is open to other users; chmod 600 (or 640) it")
        if not token:
            raise ConfigError(f"api.token_file: {api.token_file} is empty")
    if token and (len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token):
        # The value itself is never shown: it is a secret even when it is a bad one.
        raise ConfigError(
            f"api.token: must be at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces "
            "(e.g. the output of `openssl rand -hex 32`)"
        )
    return token


def same_origin(origin: str, host: str | None) -> bool:
    """A page served by this API itself (its /docs), reached by IP address or as localhost.

    A host *name* does not count: with DNS rebinding, any web page can make its own name point at
    this address and pass a same-origin check, so names must be listed in api.allowed_origins.
    """
    if not host:
        return False
    netloc = urlsplit(origin).netloc.lower()
    if netloc != host.lower():
        return False
    hostname = urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost":
        return True
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def check_origin(request: Request, allowed: frozenset[str]) -> None:
    """Refuse what a browser sends on behalf of another site (a form or fetch from any web page)."""
    origin = request.headers.get("origin")
    site = request.headers.get("sec-fetch-site")
    if origin is not None:
        if origin.lower() in allowed:
            return
        if site in (None, "same-origin") and same_origin(origin, request.headers.get("host")):
            return
        raise ApiError(403, "cross_origin", f"requests from origin {origin[:100]!r} are not accepted "
                                            "(see api.allowed_origins)")  # fmt: skip
    if site not in (None, "same-origin", "none"):
        raise ApiError(403, "cross_origin", f"cross-site requests are not accepted (Sec-Fetch-Site: {site[:20]})")


class UploadForm:
    """multipart/form-data parsed as it arrives: the file part's bytes for the caller, the fields kept.

    python-multipart calls these methods while parsing; file bytes are queued in ``pending`` for
    the caller to write outside the event loop. Every limit raises ApiError at once.
    """

    def __init__(self, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_seen = False
        self.file_bytes = 0
        self.pending: list[bytes] = []
        self.ended = False
        self._parts = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._header = [b"", b""]
        self._name: str | None = None
        self._value = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._grow(0, d[s:e]),
            "on_header_value": lambda d, s, e: self._grow(1, d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def _grow(self, i: int, data: bytes) -> None:
        self._header[i] += data
        if len(self._header[i]) > PART_HEADER_BYTES:
            raise ApiError(400, "malformed_body", "a part header is too long")

    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ApiError(400, "too_many_parts", f"at most {MAX_PARTS} parts: file and {', '.join(FIELDS)}")
        self._headers, self._name, self._value = [], None, bytearray()

    def on_header_end(self) -> None:
        self._headers.append((self._header[0].lower(), self._header[1]))
        self._header = [b"", b""]

    def on_headers_finished(self) -> None:
        disposition = next((v for k, v in self._headers if k == b"content-disposition"), None)
        kind, options = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in options:
            raise ApiError(400, "malformed_body", "every part needs Content-Disposition: form-data with a name")
        name = options[b"name"].decode("utf-8", "replace")
        if name == "file":
            if self.file_seen:
                raise ApiError(400, "too_many_files", "send exactly one file part (field 'file')")
            self.file_seen = True
            filename = options.get(b"filename")
            if filename is not None:
                self.filename = filename.decode("utf-8", "replace")[:FILENAME_CHARS]
        elif name not in FIELDS:
            raise ApiError(400, "unexpected_field",
                           f"unknown form field {name[:50]!r}; the fields are file, {', '.join(FIELDS)}")  # fmt: skip
        elif name in self.fields or name == self._name:
            raise ApiError(400, "duplicate_field", f"form field {name!r} is sent twice")
        elif b"filename" in options:
            raise ApiError(400, "too_many_files", f"form field {name!r} must be a value, not a file")
        self._name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file":
            self.file_bytes += end - start
            if self.file_bytes > self.max_file_bytes:
                raise file_too_large(self.max_file_bytes)
            self.pending.append(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > FIELD_BYTES:
            raise ApiError(400, "field_too_large", f"form field {self._name!r} is over {FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self._name is not None and self._name != "file":
            try:
                self.fields[self._name] = self._value.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, "malformed_body", f"form field {self._name!r} is not UTF-8") from None

    def on_end(self) -> None:
        self.ended = True


def queue_unavailable() -> ApiError:
    return ApiError(503, "queue_unavailable", "the job queue is unreachable; try again later",
                    headers={"Retry-After": "10"})  # fmt: skip


def file_too_large(max_file_bytes: int) -> ApiError:
    return ApiError(413, "file_too_large", f"the file is larger than limits.max_file_mb = {max_file_bytes / 2**20:g}")


def job_options(fields: dict[str, str]) -> tuple[str | None, list[str] | None, bool]:
    """(language, formats, word_timestamps) from the form, or ApiError 422."""
    language = fields.get("language", "").strip() or None
    formats = fields.get("formats")
    wanted = [f.strip() for f in formats.split(",") if f.strip()] if formats else None
    if wanted is not None and (not wanted or any(f not in FORMATS for f in wanted)):
        raise ApiError(422, "unsupported_format", f"formats must be a comma-separated list from {','.join(FORMATS)}")
    words = fields.get("word_timestamps", "").strip().lower()
    if words not in TRUE + FALSE:
        raise ApiError(422, "invalid_option", "word_timestamps must be true or false")
    return language, wanted, words in TRUE


class UploadSlots:
    """Uploads in progress, in all and per client address (the event loop's thread only).

    The per-client share keeps one client from holding every slot; behind a reverse proxy every
    upload comes from the proxy's address, so it is then one more bound on the total.
    """

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.count = 0
        self.by_client: Counter[str] = Counter()

    @contextmanager
    def take(self, client: str) -> Iterator[None]:
        if self.count >= self.total:
            raise ApiError(503, "too_many_uploads", f"{self.count} uploads are in progress; try again shortly",
                           headers={"Retry-After": "5"})  # fmt: skip
        if self.by_client[client] >= self.per_client:
            raise ApiError(503, "too_many_uploads", f"{self.by_client[client]} uploads from your address are in "
                           "progress; try again once one has finished", headers={"Retry-After": "5"})  # fmt: skip
        self.count += 1
        self.by_client[client] += 1
        try:
            yield
        finally:
            self.count -= 1
            self.by_client[client] -= 1
            if not self.by_client[client]:
                del self.by_client[client]


class UploadClock:
    """How long an upload may wait for its next bytes.

    ``api.upload_idle_timeout_s`` bounds one read; a client sending a byte every 25 s passed that
    and held a slot for as long as it liked (four of them held all four). So an upload must also
    average UPLOAD_MIN_RATE bytes/s from UPLOAD_GRACE_S on, and end within UPLOAD_DEADLINE_S.
    """

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.start = time.monotonic()

    def wait_s(self, received: int) -> float:
        """Seconds the next read may take with ``received`` bytes in; <= 0: too slow already."""
        elapsed = time.monotonic() - self.start
        return min(self.idle_s, UPLOAD_DEADLINE_S - elapsed, UPLOAD_GRACE_S + received / UPLOAD_MIN_RATE - elapsed)

    def too_slow(self, received: int) -> ApiError:
        elapsed = time.monotonic() - self.start
        if elapsed >= UPLOAD_DEADLINE_S:
            why = f"the upload took over {UPLOAD_DEADLINE_S:g} s"
        elif elapsed >= UPLOAD_GRACE_S + received / UPLOAD_MIN_RATE:
            why = f"{received} bytes in {elapsed:.0f} s: uploads must average {UPLOAD_MIN_RATE // 1024} KiB/s"
        else:
            why = f"no data for {self.idle_s:g} s"
        return ApiError(408, "upload_timeout", why)


def open_result(results_dir: str, task_id: str, fmt: str, recorded: str | None) -> BinaryIO | None:
    """The task's own result file, opened; None unless it is verifiably that task's.

    A completion names its files, and anyone who may publish to the result queue can forge one
    (pointing a task at another task's file). So the recorded path must be
    ``results_dir/<task_id>.<format>``, and what is opened there must be a regular file with one
    link, opened without following a symlink (and without blocking on a FIFO).
    """
    real_dir = os.path.realpath(results_dir)
    name = f"{task_id}.{fmt}"
    if recorded is None or os.path.basename(recorded) != name:
        return None
    if os.path.realpath(os.path.dirname(recorded)) != real_dir:
        return None
    try:
        fd = os.open(os.path.join(real_dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def read_chunks(f: BinaryIO, size: int = 64 * 1024) -> Iterator[bytes]:
    with f:
        while chunk := f.read(size):
            yield chunk


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(cfg: Config, listen_host: str) -> list[str] | None:
    """The Host names the API answers to; None for any (a non-loopback address with no names set)."""
    names = [*ALLOWED_HOSTS, *getattr(cfg.api, "allowed_hosts", ())]
    if is_loopback(listen_host):
        return [*LOOPBACK_HOSTS, *names]
    return names or None


class HostCheck(TrustedHostMiddleware):
    """Starlette's TrustedHostMiddleware, for every route, answering with JSON and a code.

    DNS rebinding: a web page makes its own name resolve to 127.0.0.1 and has the visitor's
    browser read this API; those requests carry the page's name in Host. A loopback name must
    also carry the port the API listens on (or none); configured names may carry any.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: list[str], port: int) -> None:
        super().__init__(app, allowed_hosts, www_redirect=False)
        self.port = str(port)

    def allows(self, header: str | None) -> bool:
        parsed = parse_host_header(header)
        if parsed is None:
            return False
        host = parsed.host.lower()
        if host in LOOPBACK_HOSTS and parsed.port not in (None, self.port):
            return False
        return self.allow_any or any(
            host == p or (p.startswith("*") and host.endswith(p[1:])) for p in self.allowed_hosts
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.allows(Headers(scope=scope).get("host")):
            host = Headers(scope=scope).get("host", "")
            log.info("%s %s: 400 invalid_host (%r)", scope["method"], scope["path"][:100], host[:100])
            why = "this API does not answer to that Host header (see api.allowed_hosts)"
            answer = error_response(400, "invalid_host", why, headers={"Connection": "close"})
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)


UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the audio or video file"},
                        "language": {"type": "string", "description": "ISO code such as es; empty = detect"},
                        "formats": {"type": "string", "description": f"comma-separated from {','.join(FORMATS)}"},
                        "word_timestamps": {"type": "boolean", "default": False},
                    },
                }
            }
        },
    }
}


# Module level: FastAPI resolves the (postponed) annotations that name it in this module's globals.
BEARER = HTTPBearer(auto_error=False, description="api.token, when one is configured")


def create_app(cfg: Config, token: str = "", listen: tuple[str, int] | None = None) -> FastAPI:
    """The API; ``listen`` (host, port) is where it is served, for the Host header check."""
    store = TaskStore(cfg.api.state_dir)
    publisher = Publisher(cfg)
    uploads = Uploads(cfg, store)
    listener = CompletionListener(cfg, store, uploads.finished)
    max_file_bytes = int(cfg.limits.max_file_mb * 2**20)
    max_body_bytes = max_file_bytes + FORM_OVERHEAD
    allowed_origins = frozenset(o.lower() for o in cfg.api.allowed_origins)
    per_client = UPLOADS_PER_CLIENT or max(1, cfg.api.max_concurrent_uploads // 2)
    slots = UploadSlots(cfg.api.max_concurrent_uploads, per_client)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        uploads.start()
        listener.start()
        yield
        listener.stop()
        uploads.stop()
        publisher.close()

    app = FastAPI(title="whisperd", version="1", lifespan=lifespan)
    if listen is not None and (hosts := allowed_hosts(cfg, listen[0])) is not None:
        app.add_middleware(HostCheck, allowed_hosts=hosts, port=listen[1])

    @app.exception_handler(ApiError)
    async def refused(request: Request, e: ApiError) -> JSONResponse:
        log.info("%s %s: %d %s", request.method, request.url.path, e.status, e.code)
        headers = dict(e.headers or {})
        if request.method == "POST":  # the rest of a refused upload is never read: close, do not skip it
            headers["Connection"] = "close"
        return error_response(e.status, e.code, e.message, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return error_response(500, "internal_error", "the API failed to answer; see its log")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", "the request does not match the API (see /docs)")

    def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if not token:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, token.encode()):
            raise ApiError(401, "unauthorized", "a valid bearer token is required",
                           headers={"WWW-Authenticate": 'Bearer realm="whisperd"'})  # fmt: skip

    async def receive_upload(request: Request, out: BinaryIO) -> UploadForm:
        """Stream the body through the form parser into ``out``; every bound is checked as bytes arrive."""
        kind, params = parse_options_header(request.headers.get("content-type"))
        if kind != b"multipart/form-data":
            raise ApiError(415, "unsupported_media_type", "send multipart/form-data (a form with a file part)")
        form = UploadForm(max_file_bytes)
        try:
            parser = MultipartParser(params.get(b"boundary", b""), form.callbacks(), max_header_count=PART_HEADERS,
                                     max_header_size=PART_HEADER_BYTES)  # fmt: skip
        except FormParserError as e:
            raise ApiError(400, "malformed_body", f"bad multipart boundary: {e}") from None
        if not params.get(b"boundary"):
            raise ApiError(400, "malformed_body", "the Content-Type has no multipart boundary")
        received = 0
        more = True
        clock = UploadClock(cfg.api.upload_idle_timeout_s)
        while more:
            if (wait_s := clock.wait_s(received)) <= 0:
                raise clock.too_slow(received)
            try:
                message = await asyncio.wait_for(request.receive(), wait_s)
            except TimeoutError:
                raise clock.too_slow(received) from None
            if message["type"] != "http.request":
                raise ApiError(400, "incomplete_body", "the client went away during the upload")
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            received += len(chunk)
            if received > max_body_bytes:
                raise file_too_large(max_file_bytes)
            try:
                parser.write(chunk)
            except FormParserError as e:
                raise ApiError(400, "malformed_body", f"not valid multipart/form-data: {e}") from None
            if form.pending and (not more or sum(map(len, form.pending)) >= WRITE_BYTES):
                data = b"".join(form.pending)
                form.pending.clear()
                await run_in_threadpool(out.write, data)
        if not form.ended:
            raise ApiError(400, "incomplete_body", "the body ended before the closing multipart boundary")
        return form

    @app.post("/transcriptions", status_code=202, dependencies=[Depends(authorize)], openapi_extra=UPLOAD_OPENAPI)
    async def create(request: Request) -> JSONResponse:
        check_origin(request, allowed_origins)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            raise file_too_large(max_file_bytes) if length.isdigit() else ApiError(400, "malformed_body", "bad length")
        if publisher.full:  # refused before the client sends the file, which could not be queued now
            raise queue_unavailable()
        with slots.take(request.client.host if request.client else ""):
            form, relative, task_id = await receive_file(request)
        await run_in_threadpool(fsync_dir, uploads.dir)
        await run_in_threadpool(store.create, task_id, form.filename, relative)
        body = job_body(task_id, relative, *job_options(form.fields))
        try:
            await publisher.publish(body, task_id)
        except (pika.exceptions.AMQPError, OSError) as e:
            store.delete(task_id)
            os.unlink(os.path.join(cfg.storage.media_root, relative))
            log.error("cannot queue task %s: %s", task_id, e)
            raise queue_unavailable() from None
        return JSONResponse({"task_id": task_id, "status": LABELS[QUEUED]}, status_code=202,
                            headers={"Location": f"/transcriptions/{task_id}"})  # fmt: skip

    async def receive_file(request: Request) -> tuple[UploadForm, str, str]:
        """The upload, checked and renamed into place: (form, audio_path under media_root, task id)."""
        task_id = uuid.uuid4().hex
        partial = uploads.partial_path(task_id)
        try:
            with open(partial, "wb") as out:
                form = await receive_upload(request, out)
                await run_in_threadpool(lambda: (out.flush(), os.fsync(out.fileno())))
            if not form.file_seen:
                raise ApiError(422, "missing_file", "the form has no file part (field 'file')")
            if form.file_bytes == 0:
                raise ApiError(422, "empty_file", "the file is empty")
            job_options(form.fields)  # refused before the file is kept
            suffix = Path(form.filename or "").suffix.lower()
            relative = os.path.join(cfg.api.upload_subdir, task_id + (suffix if SUFFIX_RE.fullmatch(suffix) else ""))
            os.chmod(partial, 0o640)
            os.replace(partial, os.path.join(cfg.storage.media_root, relative))
        except BaseException:
            try:
                os.unlink(partial)
            except FileNotFoundError:
                pass
            raise
        return form, relative, task_id

    def record_of(task_id: str) -> dict[str, Any]:
        if not TASK_ID_RE.fullmatch(task_id):
            raise ApiError(400, "invalid_task_id", "a task id is 1-128 characters of A-Z a-z 0-9 . _ -")
        record = store.get(task_id)
        if record is None:
            raise ApiError(404, "task_not_found", f"no task {task_id}")
        return record

    @app.get("/transcriptions/{task_id}", dependencies=[Depends(authorize)])
    def status(task_id: str) -> dict[str, Any]:
        return view(record_of(task_id), "/")

    @app.get("/transcriptions/{task_id}/result.{fmt}", dependencies=[Depends(authorize)])
    def result(task_id: str, fmt: str) -> StreamingResponse:
        paths = (record_of(task_id).get("completion") or {}).get("results") or {}
        recorded = paths.get(fmt) if fmt in FORMATS else None
        f = open_result(cfg.storage.results_dir, task_id, fmt, recorded)
        if f is None:
            raise ApiError(404, "result_not_found", f"task {task_id} has no {fmt[:10]} result")
        media = {"json": "application/json", "vtt": "text/vtt"}.get(fmt, "text/plain")
        size = os.fstat(f.fileno()).st_size
        return StreamingResponse(read_chunks(f), media_type=f"{media}; charset=utf-8", headers={
            "Content-Length": str(size), "Content-Disposition": f'attachment; filename="{task_id}.{fmt}"'})  # fmt: skip

    @app.get("/healthz")
    async def health() -> JSONResponse:
        """200 only while the completion listener runs and is connected: GET answers are current."""
        return JSONResponse(listener.health(), status_code=200 if listener.healthy else 503)

    return app


class LogThrottle(logging.Filter):
    """At most LOG_BURST records of one kind (logger and message) per LOG_INTERVAL_S; the next one
    after that says how many were left out. A flood of hostile requests or messages must not
    flood the journal (accept() failing on EMFILE once wrote 124 000 tracebacks in 17 s).
    """

    def __init__(self, burst: int = LOG_BURST, interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self.burst = burst
        self.interval_s = interval_s
        self._windows: dict[tuple[str, str], list[float]] = {}  # kind -> [start, records]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        kind, now = (record.name, str(record.msg)), time.monotonic()
        with self._lock:
            window = self._windows.get(kind)
            if window is not None and now - window[0] < self.interval_s:
                window[1] += 1
                return window[1] <= self.burst
            left_out = int(window[1]) - self.burst if window is not None else 0
            if len(self._windows) > 10_000:  # many kinds: forget the old windows
                self._windows.clear()
            self._windows[kind] = [now, 1]
        if left_out > 0:
            record.msg = f"{record.msg} [{left_out} more like this were not logged]"
        return True


def install_log_throttle() -> None:
    throttle = LogThrottle()
    for name in ("uvicorn.error", "asyncio", log.name):
        logging.getLogger(name).addFilter(throttle)


def connection_limit() -> int:
    """How many connections fit in this process's descriptors, with FD_RESERVE left over.

    The soft RLIMIT_NOFILE is raised to the hard one first (systemd's default soft limit is 1024).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_FDS if hard == resource.RLIM_INFINITY else min(hard, WANTED_FDS)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (OSError, ValueError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = WANTED_FDS
    free = soft - FD_RESERVE - IN_FLIGHT_BATCHES * BACKLOG
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, free // FDS_PER_CONNECTION))


class ConnectionGuard:
    """The server's open connections, bounded below its descriptor limit.

    uvicorn accepts every connection and waits for its request head forever: 1100 connections
    that sent nothing used up a 1024-descriptor API (accept() then failed in a loop, /healthz
    timed out). Here a connection that has no request in progress is closed once it has sent no
    complete request head for HEAD_TIMEOUT_S, and at ``limit`` a new connection pushes out an idle
    one of the client address that holds the most, so one client's flood cannot lock out others.
    A connection with a request in progress is left to the request's own bounds.
    """

    def __init__(self, limit: int, head_timeout_s: float) -> None:
        self.limit = limit
        self.head_timeout_s = head_timeout_s
        self.idle_since: dict[GuardedH11Protocol, float | None] = {}  # None: a request in progress
        self.by_client: Counter[str] = Counter()
        self._sweeping = False

    def opened(self, conn: GuardedH11Protocol) -> None:
        if len(self.idle_since) >= self.limit:
            victim = self._victim()
            if victim is None:  # every connection has a request in progress: this one waits for none
                log.warning("%d connections, all busy: refusing one from %s", len(self.idle_since), conn.host)
                conn.transport.abort()
                return
            log.warning("%d connections open (the limit): closing an idle one from %s", self.limit, victim.host)
            self.drop(victim)
            victim.transport.abort()
        self.idle_since[conn] = time.monotonic()
        self.by_client[conn.host] += 1
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def drop(self, conn: GuardedH11Protocol) -> None:
        if conn in self.idle_since:
            del self.idle_since[conn]
            self.by_client[conn.host] -= 1
            if not self.by_client[conn.host]:
                del self.by_client[conn.host]

    def busy(self, conn: GuardedH11Protocol, busy: bool) -> None:
        if conn in self.idle_since and (self.idle_since[conn] is None) != busy:
            self.idle_since[conn] = None if busy else time.monotonic()

    def _victim(self) -> GuardedH11Protocol | None:
        idle = [(self.by_client[c.host], -since, c) for c, since in self.idle_since.items() if since is not None]
        return max(idle, key=lambda t: t[:2])[2] if idle else None

    def _sweep(self) -> None:
        """Close the connections idle past the head timeout (abort those still closing after twice that)."""
        now = time.monotonic()
        for conn, since in list(self.idle_since.items()):
            if since is None or now - since < self.head_timeout_s:
                continue
            if conn.transport.is_closing():
                if now - since >= 2 * self.head_timeout_s:  # a client that does not read what is left
                    self.drop(conn)
                    conn.transport.abort()
            else:
                conn.transport.close()
        asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, telling its ConnectionGuard when a connection opens, works and ends."""

    guard: ConnectionGuard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.host = self.client[0] if self.client else ""
        self.guard.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.drop(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.guard.busy(self, self._in_request())

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.guard.busy(self, self._in_request())

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})


def serve(cfg: Config, listen: str | None = None) -> int:
    import uvicorn

    from whisperd.config import split_listen

    host, port = split_listen(listen or cfg.api.listen)
    if not os.path.isdir(cfg.storage.media_root):
        log.error("storage.media_root %s does not exist", cfg.storage.media_root)
        return 2
    try:
        token = load_token(cfg.api)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    if not token and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("the API listens on %s without api.token: anyone who can reach it can submit jobs", host)
    guard = ConnectionGuard(connection_limit(), HEAD_TIMEOUT_S)
    log.info("at most %d connections (RLIMIT_NOFILE %d)", guard.limit, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    config = uvicorn.Config(create_app(cfg, token, (host, port)), host=host, port=port, access_log=False,
                            log_level=cfg.logging.level.lower(), http=guarded_protocol(guard),
                            backlog=BACKLOG)  # fmt: skip
    install_log_throttle()  # after uvicorn.Config, which configures its loggers
    uvicorn.Server(config).run()
    return 0
