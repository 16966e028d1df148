"""``whisperd api``: an optional reference HTTP API for sites without their own producer.

POST /transcriptions saves the upload under media_root and queues a job; a background thread
consumes the result queue and records every completion; GET /transcriptions/{id} answers from
those records. Each task is one small JSON file in ``api.state_dir``, written atomically and
fsynced *before* the completion is acked, so nothing is lost when the API restarts: completions
that arrive while it is down wait in the (durable) result queue and are read on the next start.
A file per task needs no database server and is plenty for a reference service; a site with
heavy traffic would keep the same records in its own database.

Imports FastAPI only here; install with ``pip install 'whisperd[api]'``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import pika
import pika.exceptions
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, JSONResponse

from whisperd import broker
from whisperd.config import FORMATS, Config
from whisperd.contract import DONE, FAILED, PROCESSING, TASK_ID_RE, Completion, job_body
from whisperd.results import atomic_write

log = logging.getLogger("whisperd.api")

QUEUED = "queued"
# What the API's users see (the .NET API's vocabulary); ``state`` carries the English name.
LABELS = {QUEUED: "En proceso", PROCESSING: "En curso", DONE: "Completado", FAILED: "Error"}
FINAL = (DONE, FAILED)
CHUNK = 1 << 20
SUFFIX_RE = re.compile(r"\.[A-Za-z0-9]{1,8}")
PUBLISH_RETRY_S = 30.0  # how long an upload's job is offered to the cluster's nodes before a 503


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


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

    def apply(self, c: Completion) -> None:
        """Record a completion or a processing event; a late "processing" never undoes a result."""
        assert c.task_id is not None
        with self._lock:
            record = self.get(c.task_id)
            at = now_iso()
            if record is None:  # queued by another producer: still worth answering for
                record = {"task_id": c.task_id, "state": None, "filename": None, "audio_path": None,
                          "submitted_at": None, "history": [], "completion": None}  # fmt: skip
            if record["state"] in FINAL and c.status == PROCESSING:
                return
            record.update(state=c.status, updated_at=at)
            record["history"].append({"state": c.status, "at": at})
            if c.status in FINAL:
                record["completion"] = c.__dict__
            self._put(record)


class Publisher:
    """Publishes jobs with confirms over one connection shared by the request threads.

    When the broker node it is connected to is lost, a publish goes to another node of
    ``broker.urls`` (the request waits, up to PUBLISH_RETRY_S, instead of failing).
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        # No heartbeat: idle between uploads; a dead connection shows at the next publish.
        self._publisher = broker.ConfirmedPublisher(
            cfg.broker, "whisperd api (publisher)", heartbeat=0, retry_for_s=PUBLISH_RETRY_S
        )

    def publish(self, body: bytes, task_id: str) -> None:
        """Return once a broker node confirmed the job."""
        props = broker.properties(correlation_id=task_id, message_id=task_id)
        with self._lock:
            self._publisher.publish(self.cfg.broker.job_queue, body, props)

    def close(self) -> None:
        self._publisher.close()


class CompletionListener:
    """Consumes the result queue in a thread; acks each completion after the store has it."""

    def __init__(self, cfg: Config, store: TaskStore) -> None:
        self.cfg = cfg
        self.store = store
        self.queue = cfg.api.result_queue or cfg.broker.result_queue
        self.connected = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="completions", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                self._consume()
                delay = 1.0
            except (pika.exceptions.AMQPError, OSError) as e:
                self.connected = False
                log.warning("result queue %s: %s; reconnecting in %.0f s", self.queue, e or type(e).__name__, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.cfg.broker.reconnect_max_s)

    def _consume(self) -> None:
        conn = broker.connect(self.cfg.broker, "whisperd api (completions)")
        try:
            channel = conn.channel()
            channel.basic_qos(prefetch_count=32)
            broker.declare(channel, self.cfg.broker)
            broker.declare_result_queue(channel, self.queue)
            self.connected = True
            log.info("reading completions from %s", self.queue)
            for method, _props, body in channel.consume(self.queue, inactivity_timeout=0.5):
                if self._stop.is_set():
                    break
                if method is None:
                    continue
                self._record(body)
                channel.basic_ack(method.delivery_tag)
            channel.cancel()
        finally:
            self.connected = False
            if conn.is_open:
                conn.close()

    def _record(self, body: bytes) -> None:
        try:
            completion = Completion.from_json(body)
        except (ValueError, TypeError) as e:
            log.error("dropping a message on %s that is not a completion: %s", self.queue, e)
            return
        if not completion.task_id or not TASK_ID_RE.fullmatch(completion.task_id):
            log.error("dropping a completion without a valid task_id: %r", body[:200])
            return
        self.store.apply(completion)


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
        "history": record.get("history", []),
    }


def create_app(cfg: Config) -> FastAPI:
    store = TaskStore(cfg.api.state_dir)
    publisher = Publisher(cfg)
    listener = CompletionListener(cfg, store)
    upload_dir = os.path.join(cfg.storage.media_root, cfg.api.upload_subdir)
    max_bytes = int(cfg.limits.max_file_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        os.makedirs(upload_dir, exist_ok=True)
        listener.start()
        yield
        listener.stop()
        publisher.close()

    app = FastAPI(title="whisperd", version="1", lifespan=lifespan)

    @app.post("/transcriptions", status_code=202)
    def create(
        file: Annotated[UploadFile, File(description="the audio or video file")],
        language: Annotated[str | None, Form(description="ISO code such as es; empty = detect")] = None,
        formats: Annotated[str | None, Form(description=f"comma-separated from {','.join(FORMATS)}")] = None,
        word_timestamps: Annotated[bool, Form()] = False,
    ) -> JSONResponse:
        wanted = [f.strip() for f in formats.split(",") if f.strip()] if formats else None
        if wanted is not None and (not wanted or any(f not in FORMATS for f in wanted)):
            raise HTTPException(422, f"formats must be a comma-separated list from {','.join(FORMATS)}")
        task_id = uuid.uuid4().hex
        suffix = Path(file.filename or "").suffix.lower()
        relative = os.path.join(cfg.api.upload_subdir, task_id + (suffix if SUFFIX_RE.fullmatch(suffix) else ""))
        save_upload(file, os.path.join(cfg.storage.media_root, relative), max_bytes)
        store.create(task_id, file.filename, relative)
        try:
            publisher.publish(job_body(task_id, relative, language, wanted, word_timestamps), task_id)
        except (pika.exceptions.AMQPError, OSError) as e:
            store.delete(task_id)
            os.unlink(os.path.join(cfg.storage.media_root, relative))
            log.error("cannot queue task %s: %s", task_id, e)
            raise HTTPException(503, "the job queue is unreachable; try again later") from None
        body = {"task_id": task_id, "status": LABELS[QUEUED]}
        return JSONResponse(body, status_code=202, headers={"Location": f"/transcriptions/{task_id}"})

    def record_of(task_id: str) -> dict[str, Any]:
        record = store.get(task_id) if TASK_ID_RE.fullmatch(task_id) else None
        if record is None:
            raise HTTPException(404, f"no task {task_id}")
        return record

    @app.get("/transcriptions/{task_id}")
    def status(task_id: str) -> dict[str, Any]:
        return view(record_of(task_id), "/")

    @app.get("/transcriptions/{task_id}/result.{fmt}")
    def result(task_id: str, fmt: str) -> FileResponse:
        paths = (record_of(task_id).get("completion") or {}).get("results") or {}
        path = paths.get(fmt)
        results_dir = os.path.realpath(cfg.storage.results_dir)
        if path is None or os.path.dirname(os.path.realpath(path)) != results_dir or not os.path.exists(path):
            raise HTTPException(404, f"task {task_id} has no {fmt} result")
        media = {"json": "application/json", "vtt": "text/vtt"}.get(fmt, "text/plain")
        return FileResponse(path, media_type=f"{media}; charset=utf-8", filename=f"{task_id}.{fmt}")

    @app.get("/healthz")
    def health() -> JSONResponse:
        ok = listener.connected
        return JSONResponse({"broker": "ok" if ok else "unreachable"}, status_code=200 if ok else 503)

    return app


def save_upload(upload: UploadFile, dest: str, max_bytes: int) -> None:
    """Copy the upload next to its final name, then rename: workers never see half a file."""
    tmp = f"{dest}.part"
    size = 0
    try:
        with open(tmp, "wb") as out:
            while chunk := upload.file.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise HTTPException(413, f"the file is larger than limits.max_file_mb = {max_bytes / 2**20:.0f}")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise HTTPException(422, "the file is empty")
        os.chmod(tmp, 0o640)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def serve(cfg: Config, listen: str | None = None) -> int:
    import uvicorn

    from whisperd.config import split_listen

    host, port = split_listen(listen or cfg.api.listen)
    if not os.path.isdir(cfg.storage.media_root):
        log.error("storage.media_root %s does not exist", cfg.storage.media_root)
        return 2
    uvicorn.run(create_app(cfg), host=host, port=port, log_level=cfg.logging.level.lower(), access_log=False)
    return 0
