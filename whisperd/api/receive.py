"""Receiving an upload: a bounded share of the upload slots, a deadline on every read, and the
file renamed into the upload directory only once the whole form has been checked."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from whisperd.api.errors import ApiError, file_too_large
from whisperd.api.form import FORM_OVERHEAD, PART_HEADER_BYTES, PART_HEADERS, UploadForm, job_options
from whisperd.api.tuning import Tuning
from whisperd.api.uploads import Uploads
from whisperd.config import Config

SUFFIX_RE = re.compile(r"\.[A-Za-z0-9]{1,8}")
WRITE_BYTES = 1 << 20  # file data is written in pieces of about this size, off the event loop


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
    average ``upload_min_rate`` bytes/s from ``upload_grace_s`` on, and end within ``upload_deadline_s``.
    """

    def __init__(self, idle_s: float, tuning: Tuning) -> None:
        self.idle_s = idle_s
        self.deadline_s = tuning.upload_deadline_s
        self.grace_s = tuning.upload_grace_s
        self.min_rate = tuning.upload_min_rate
        self.start = time.monotonic()

    def wait_s(self, received: int) -> float:
        """Seconds the next read may take with ``received`` bytes in; <= 0: too slow already."""
        elapsed = time.monotonic() - self.start
        return min(self.idle_s, self.deadline_s - elapsed, self.grace_s + received / self.min_rate - elapsed)

    def too_slow(self, received: int) -> ApiError:
        elapsed = time.monotonic() - self.start
        if elapsed >= self.deadline_s:
            why = f"the upload took over {self.deadline_s:g} s"
        elif elapsed >= self.grace_s + received / self.min_rate:
            why = f"{received} bytes in {elapsed:.0f} s: uploads must average {self.min_rate // 1024} KiB/s"
        else:
            why = f"no data for {self.idle_s:g} s"
        return ApiError(408, "upload_timeout", why)


@dataclass(frozen=True)
class Upload:
    """An upload in place under storage.media_root, its form checked; its task not recorded yet."""

    task_id: str
    audio_path: str  # relative to storage.media_root, as the job names it
    form: UploadForm


class UploadReceiver:
    """Takes one upload off a request into the upload directory, or leaves nothing behind."""

    def __init__(self, cfg: Config, uploads: Uploads, tuning: Tuning) -> None:
        self.media_root = cfg.storage.media_root
        self.subdir = cfg.api.upload_subdir
        self.idle_s = cfg.api.upload_idle_timeout_s
        self.max_file_bytes = int(cfg.limits.max_file_mb * 2**20)
        self.max_speakers = cfg.diarize.max_speakers
        self.max_body_bytes = self.max_file_bytes + FORM_OVERHEAD
        self.uploads = uploads
        self.tuning = tuning
        per_client = tuning.uploads_per_client or max(1, cfg.api.max_concurrent_uploads // 2)
        self.slots = UploadSlots(cfg.api.max_concurrent_uploads, per_client)

    def check_length(self, length: str | None) -> None:
        """A declared Content-Length is refused before a byte of the body is read."""
        if length is None:
            return
        if not length.isdigit():
            raise ApiError(400, "malformed_body", "bad length")
        if int(length) > self.max_body_bytes:
            raise file_too_large(self.max_file_bytes)

    async def receive(self, request: Request) -> Upload:
        """The upload, checked and renamed into place, while it holds one of the upload slots."""
        with self.slots.take(request.client.host if request.client else ""):
            return await self._receive(request)

    async def _receive(self, request: Request) -> Upload:
        task_id = uuid.uuid4().hex
        partial = self.uploads.partial_path(task_id)
        try:
            with open(partial, "wb") as out:
                form = await self._stream(request, out)
                await run_in_threadpool(lambda: (out.flush(), os.fsync(out.fileno())))
            relative = self._audio_path(form, task_id)
            os.chmod(partial, 0o640)
            os.replace(partial, os.path.join(self.media_root, relative))
        except BaseException:
            try:
                os.unlink(partial)
            except FileNotFoundError:
                pass
            raise
        return Upload(task_id, relative, form)

    def _audio_path(self, form: UploadForm, task_id: str) -> str:
        """Where a complete form's file is kept, under media_root; ApiError 422 for a form that cannot be queued."""
        if not form.file_seen:
            raise ApiError(422, "missing_file", "the form has no file part (field 'file')")
        if form.file_bytes == 0:
            raise ApiError(422, "empty_file", "the file is empty")
        job_options(form.fields, self.max_speakers)  # refused before the file is kept
        suffix = Path(form.filename or "").suffix.lower()
        return os.path.join(self.subdir, task_id + (suffix if SUFFIX_RE.fullmatch(suffix) else ""))

    async def _stream(self, request: Request, out: BinaryIO) -> UploadForm:
        """Stream the body through the form parser into ``out``; every bound is checked as bytes arrive."""
        form, parser = self._parser(request.headers.get("content-type"))
        received = 0
        more = True
        clock = UploadClock(self.idle_s, self.tuning)
        while more:
            chunk, more = await self._next_chunk(request, clock, received)
            received += len(chunk)
            if received > self.max_body_bytes:
                raise file_too_large(self.max_file_bytes)
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

    def _parser(self, content_type: str | None) -> tuple[UploadForm, MultipartParser]:
        kind, params = parse_options_header(content_type)
        if kind != b"multipart/form-data":
            raise ApiError(415, "unsupported_media_type", "send multipart/form-data (a form with a file part)")
        form = UploadForm(self.max_file_bytes)
        try:
            parser = MultipartParser(params.get(b"boundary", b""), form.callbacks(), max_header_count=PART_HEADERS,
                                     max_header_size=PART_HEADER_BYTES)  # fmt: skip
        except FormParserError as e:
            raise ApiError(400, "malformed_body", f"bad multipart boundary: {e}") from None
        if not params.get(b"boundary"):
            raise ApiError(400, "malformed_body", "the Content-Type has no multipart boundary")
        return form, parser

    @staticmethod
    async def _next_chunk(request: Request, clock: UploadClock, received: int) -> tuple[bytes, bool]:
        """The next piece of the body and whether more follows, within the clock's wait."""
        if (wait_s := clock.wait_s(received)) <= 0:
            raise clock.too_slow(received)
        try:
            message = await asyncio.wait_for(request.receive(), wait_s)
        except TimeoutError:
            raise clock.too_slow(received) from None
        if message["type"] != "http.request":
            raise ApiError(400, "incomplete_body", "the client went away during the upload")
        return message.get("body", b""), message.get("more_body", False)
