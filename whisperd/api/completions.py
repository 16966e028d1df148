"""What a result-queue message must be before the API stores it and shows it to its users."""

from __future__ import annotations

import math
from typing import Any

from whisperd.contract import Completion, JobError
from whisperd.wire import DONE, FAILED, FORMATS, MAX_COMPLETION_BYTES, PROCESSING, STATUSES, TASK_ID_RE, unknown_formats


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

    ``Completion.from_json`` bounds the cost (``wire.MAX_COMPLETION_BYTES``, the one limit of every
    reader of completions) and checks the types; the API stores what it reads and shows it to
    users, so it also checks every value; fields it does not know are ignored.
    """
    try:
        c = Completion.from_json(body, MAX_COMPLETION_BYTES)
    except JobError as e:
        raise ValueError(e.message) from None
    _check_shape(c)
    _check_text(c)
    c.duration_s = _seconds(c.duration_s, "duration_s")
    c.processing_s = _seconds(c.processing_s, "processing_s")
    c.audio_done_s = _seconds(c.audio_done_s, "audio_done_s")
    if c.progress is not None and not 0 <= c.progress <= 1:
        raise ValueError("progress must be between 0 and 1")
    return c


def _check_shape(c: Completion) -> None:
    """The task id, the status, the result formats and the error's values."""
    if not isinstance(c.task_id, str) or not TASK_ID_RE.fullmatch(c.task_id):
        raise ValueError("task_id is missing or not 1-128 characters of A-Z a-z 0-9 . _ -")
    if c.status not in STATUSES:
        raise ValueError(f"status must be {PROCESSING}, {DONE} or {FAILED}")
    if unknown_formats(c.results):
        raise ValueError(f"results must map formats ({', '.join(FORMATS)}) to paths")
    if c.error is not None and not all(_scalar(v) for v in c.error.values()):
        raise ValueError("error must be an object of plain values")


def _check_text(c: Completion) -> None:
    """Every string can be written to a record as UTF-8."""
    for name in ("text", "language", "worker"):
        _text(getattr(c, name), name)
    for path in c.results.values():
        _text(path, "results")
    for k, v in (c.error or {}).items():
        _text(k, "error")
        if isinstance(v, str):
            _text(v, f"error.{k}")
