"""The routes: upload a file for transcription, a task's status, its result files, and health."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import pika.exceptions
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from whisperd.api.auth import authorize
from whisperd.api.context import ApiContext, get_context
from whisperd.api.errors import ApiError, queue_unavailable
from whisperd.api.form import job_options
from whisperd.api.origin import check_origin
from whisperd.api.records import TaskRecord, view
from whisperd.api.result_files import open_result, read_chunks
from whisperd.contract import SPEAKERS_LIMIT, job_body
from whisperd.results import fsync_dir
from whisperd.wire import FORMATS, LABELS, QUEUED, TASK_ID_RE

log = logging.getLogger("whisperd.api")

Context = Annotated[ApiContext, Depends(get_context)]

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
                        "diarize": {
                            "type": "boolean",
                            "description": "label each segment with its speaker; empty = the workers' diarize.default",
                        },
                        "speakers": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": SPEAKERS_LIMIT,
                            "description": "with diarize: the exact number of speakers, if known (at most the "
                            "workers' diarize.max_speakers; not with min_speakers or max_speakers)",
                        },
                        "min_speakers": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": SPEAKERS_LIMIT,
                            "description": "with diarize: at least this many speakers",
                        },
                        "max_speakers": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": SPEAKERS_LIMIT,
                            "description": "with diarize: at most this many speakers (and diarize.max_speakers)",
                        },
                    },
                }
            }
        },
    }
}

router = APIRouter()


@router.post("/transcriptions", status_code=202, dependencies=[Depends(authorize)], openapi_extra=UPLOAD_OPENAPI)
async def create(request: Request, ctx: Context) -> JSONResponse:
    # (No docstring: FastAPI would show it in /docs.) 202 once a broker node confirmed the job; nothing kept otherwise.
    check_origin(request, ctx.allowed_origins)
    ctx.receiver.check_length(request.headers.get("content-length"))
    if ctx.publisher.full:  # refused before the client sends the file, which could not be queued now
        raise queue_unavailable()
    upload = await ctx.receiver.receive(request)
    task_id = upload.task_id
    await run_in_threadpool(fsync_dir, ctx.uploads.dir)
    await run_in_threadpool(ctx.store.create, task_id, upload.form.filename, upload.audio_path)
    body = job_body(task_id, upload.audio_path, **job_options(upload.form.fields, ctx.cfg.diarize.max_speakers))
    try:
        await ctx.publisher.publish(body, task_id)
    except (pika.exceptions.AMQPError, OSError) as e:
        ctx.store.delete(task_id)
        os.unlink(os.path.join(ctx.cfg.storage.media_root, upload.audio_path))
        log.error("cannot queue task %s: %s", task_id, e)
        raise queue_unavailable() from None
    return JSONResponse({"task_id": task_id, "status": LABELS[QUEUED]}, status_code=202,
                        headers={"Location": f"/transcriptions/{task_id}"})  # fmt: skip


def record_of(ctx: ApiContext, task_id: str) -> TaskRecord:
    if not TASK_ID_RE.fullmatch(task_id):
        raise ApiError(400, "invalid_task_id", "a task id is 1-128 characters of A-Z a-z 0-9 . _ -")
    record = ctx.store.get(task_id)
    if record is None:
        raise ApiError(404, "task_not_found", f"no task {task_id}")
    return record


@router.get("/transcriptions/{task_id}", dependencies=[Depends(authorize)])
def status(task_id: str, ctx: Context) -> dict[str, Any]:
    return view(record_of(ctx, task_id), "/")


@router.get("/transcriptions/{task_id}/result.{fmt}", dependencies=[Depends(authorize)])
def result(task_id: str, fmt: str, ctx: Context) -> StreamingResponse:
    completion = record_of(ctx, task_id).completion
    paths = (completion.results if completion else None) or {}
    recorded = paths.get(fmt) if fmt in FORMATS else None
    f = open_result(ctx.cfg.storage.results_dir, task_id, fmt, recorded)
    if f is None:
        raise ApiError(404, "result_not_found", f"task {task_id} has no {fmt[:10]} result")
    media = {"json": "application/json", "vtt": "text/vtt"}.get(fmt, "text/plain")
    size = os.fstat(f.fileno()).st_size
    return StreamingResponse(read_chunks(f), media_type=f"{media}; charset=utf-8", headers={
        "Content-Length": str(size), "Content-Disposition": f'attachment; filename="{task_id}.{fmt}"'})  # fmt: skip


@router.get("/healthz")
async def health(ctx: Context) -> JSONResponse:
    """200 only while the completion listener runs and is connected: GET answers are current."""
    return JSONResponse(ctx.listener.health(), status_code=200 if ctx.listener.healthy else 503)
