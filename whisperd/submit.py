"""``whisperd submit``: the reference producer, doing what the producer API does.

Each file is copied into media_root under a fresh task id, and a job is published with
``reply_to`` pointing at a private reply queue, so ``--wait`` gets the completions without
taking them from the shared result queue.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from whisperd import broker
from whisperd.config import Config
from whisperd.contract import DONE, FAILED, Completion

SUBMIT_DIR = "submitted"


@dataclass
class Submitted:
    task_id: str
    source: Path
    audio_path: str


def new_task_id() -> str:
    return uuid.uuid4().hex


def stage(cfg: Config, source: Path, task_id: str) -> str:
    """Copy ``source`` into media_root; return the job's audio_path (relative to media_root)."""
    relative = os.path.join(SUBMIT_DIR, f"{task_id}{source.suffix.lower()}")
    dest = os.path.join(cfg.storage.media_root, relative)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.part"
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o640)
    os.replace(tmp, dest)
    return relative


def job_body(task_id: str, audio_path: str, language: str | None, formats: list[str] | None) -> bytes:
    job: dict[str, object] = {"task_id": task_id, "audio_path": audio_path}
    if language:
        job["language"] = language
    if formats:
        job["formats"] = formats
    return json.dumps(job).encode()


def submit(
    cfg: Config,
    files: list[Path],
    wait: bool = False,
    language: str | None = None,
    formats: list[str] | None = None,
    output: Path | None = None,
    timeout: float = 3600.0,
) -> int:
    connection = broker.connect(cfg.broker, "whisperd submit")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        broker.declare(channel, cfg.broker)
        reply_to = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue if wait else None
        submitted = []
        for source in files:
            task_id = new_task_id()
            audio_path = stage(cfg, source, task_id)
            props = broker.properties(correlation_id=task_id, reply_to=reply_to, message_id=task_id)
            broker.publish(channel, cfg.broker.job_queue, job_body(task_id, audio_path, language, formats), props)
            submitted.append(Submitted(task_id, source, audio_path))
            print(f"{task_id}\t{source}\tEn proceso", file=sys.stderr if wait else sys.stdout, flush=True)
        if not wait:
            return 0
        return _wait(channel, reply_to, submitted, output, timeout)
    finally:
        if connection.is_open:
            connection.close()


def _wait(channel: object, reply_to: str, submitted: list[Submitted], output: Path | None, timeout: float) -> int:
    pending = {s.task_id: s for s in submitted}
    failures = 0
    deadline = time.monotonic() + timeout
    for method, props, body in channel.consume(reply_to, auto_ack=True, inactivity_timeout=1.0):  # type: ignore[attr-defined]
        if method is not None:
            completion = Completion.from_json(body)
            item = pending.pop(props.correlation_id or completion.task_id or "", None)
            if item is not None and completion.status in (DONE, FAILED):
                failures += completion.status == FAILED
                _show(item, completion, output)
        if not pending or time.monotonic() > deadline:
            break
    channel.cancel()  # type: ignore[attr-defined]
    for item in pending.values():
        print(f"{item.source}: no answer within {timeout:.0f} s (task {item.task_id} is still queued)", file=sys.stderr)
    return 2 if pending else (1 if failures else 0)


def _show(item: Submitted, c: Completion, output: Path | None) -> None:
    if c.status == FAILED:
        err = c.error or {}
        print(f"{item.source}: FAILED {err.get('code')}: {err.get('message')}", flush=True)
        return
    print(f"{item.source} [{c.language}, {c.duration_s:.1f} s audio, {c.processing_s:.2f} s]: {c.text}", flush=True)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        for fmt, path in c.results.items():
            try:
                shutil.copyfile(path, output / f"{item.source.stem}.{fmt}")
            except OSError as e:
                print(f"{item.source}: cannot copy {fmt} result from {path}: {e}", file=sys.stderr)
