"""The words and limits of the message contract, each named once.

Statuses and the labels the API's users see, result formats, error codes, the task id pattern,
the job options, the size limits of jobs and completions, and the sample rate audio is decoded
to: the vocabulary that producers, workers, ``whisperd submit`` and ``whisperd api`` share.
They were spread over the modules that use them, some written twice with different values.

A leaf module, like supervisord's ``states.py``: it imports nothing of whisperd's (a test checks
it), only the standard library, so any module can import it (the decoder's helper process, the
configuration's keys) without an import cycle. Parsing and building messages is
``whisperd.contract``'s, which re-exports these names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# A task's status: a completion's ``status`` is one of STATUSES; QUEUED is the API's own, for a
# task it has queued that no worker has started yet.
QUEUED = "queued"
PROCESSING = "processing"
DONE = "done"
FAILED = "failed"
STATUSES = (PROCESSING, DONE, FAILED)
FINAL = (DONE, FAILED)
# What the API's users (and ``whisperd submit``) see: the .NET API's vocabulary.
LABELS = {QUEUED: "En proceso", PROCESSING: "En curso", DONE: "Completado", FAILED: "Error"}

FORMATS = ("json", "txt", "srt", "vtt", "tsv")  # whisper's writers; a job may ask for any of them
DEFAULT_FORMATS = ("json", "txt")


def unknown_formats(formats: Iterable[object]) -> list[object]:
    """The entries of ``formats`` that are not result formats, in order ([] when all are known).

    Every list of formats is checked with it: a job's, ``transcribe.formats``, ``whisperd submit
    --format``, the API's form field, and the result paths of a completion; each caller adds what
    else its own input needs (non-empty, distinct) and words its own error."""
    return [f for f in formats if f not in FORMATS]


TASK_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
TASKS = ("transcribe", "translate")
# Whisper's hallucination guards a job may set; absent or null = the [transcribe] default.
GUARD_OPTIONS = (
    "condition_on_previous_text", "no_speech_threshold", "compression_ratio_threshold",
    "hallucination_silence_threshold",
)  # fmt: skip

# Whisper feeds only the last 223 prompt tokens to the decoder; a few KB is plenty for names and
# spelling, and the prompt is stored with the job, so anything longer is refused.
MAX_PROMPT_BYTES = 4096
MAX_AUDIO_PATH_BYTES = 4096  # PATH_MAX
DEFAULT_MAX_JOB_BYTES = 64 * 1024  # limits.max_job_bytes
# A completion carries the whole transcript (the segments are in the result files, not in the
# message): a 4-hour recording (limits.max_duration_s) is a few hundred KB of text, and even a
# hallucinated transcript at whisper's 224 tokens per 30 s window stays in the low MB. 16 MiB is
# also RabbitMQ 4's default max_message_size, so a completion the broker takes from a worker is
# one the API's listener and ``whisperd submit`` accept: the one limit for every reader.
MAX_COMPLETION_BYTES = 16 * 2**20

SAMPLE_RATE = 16000  # Hz, mono: what the decoder produces and whisper reads


class ErrorCode:
    """Stable machine-readable codes for ``error.code`` in a failed completion."""

    INVALID_JOB = "invalid_job"
    INVALID_TASK_ID = "invalid_task_id"
    INVALID_AUDIO_PATH = "invalid_audio_path"
    PATH_OUTSIDE_MEDIA_ROOT = "path_outside_media_root"
    FILE_NOT_FOUND = "file_not_found"
    FILE_UNREADABLE = "file_unreadable"
    NOT_A_FILE = "not_a_file"
    FILE_TOO_LARGE = "file_too_large"
    EMPTY_FILE = "empty_file"
    INVALID_AUDIO = "invalid_audio"
    AUDIO_TOO_LONG = "audio_too_long"
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    UNSUPPORTED_TASK = "unsupported_task"
    UNSUPPORTED_FORMAT = "unsupported_format"
    INVALID_OPTION = "invalid_option"
    TRANSCRIPTION_FAILED = "transcription_failed"
    DIARIZATION_FAILED = "diarization_failed"  # the transcript is fine; who said what could not be found
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    TASK_ID_CONFLICT = "task_id_conflict"
    INVALID_HEADERS = "invalid_headers"
