"""The message contract: what a job looks like and what a completion looks like, parsed and built.

This module is the single source of truth for the wire format; ``whisperd/schema/*.json``
describes the same thing for producers, and tests check that the two agree. Its words and
limits (statuses, formats, error codes, sizes) are named in ``whisperd.wire`` and re-exported
here. It imports no torch or whisper, nor the configuration, so the supervisor and
``whisperd submit`` can use it, and every module can import it without a cycle.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# The vocabulary is whisperd.wire's; re-exported, so ``from whisperd.contract import X`` keeps working.
from whisperd.wire import (
    DEFAULT_FORMATS,
    DEFAULT_MAX_JOB_BYTES,
    DONE,
    FAILED,
    FORMATS,
    GUARD_OPTIONS,
    MAX_AUDIO_PATH_BYTES,
    MAX_COMPLETION_BYTES,
    MAX_PROMPT_BYTES,
    PROCESSING,
    STATUSES,
    TASK_ID_RE,
    TASKS,
    ErrorCode,
    unknown_formats,
)

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_JOB_BYTES",
    "DEFAULT_MAX_SPEAKERS",
    "DONE",
    "FAILED",
    "FORMATS",
    "GUARD_OPTIONS",
    "MAX_AUDIO_PATH_BYTES",
    "MAX_COMPLETION_BYTES",
    "MAX_PROMPT_BYTES",
    "PROCESSING",
    "SPEAKERS_LIMIT",
    "SPEAKER_OPTIONS",
    "STATUSES",
    "TASKS",
    "TASK_ID_RE",
    "Completion",
    "ErrorCode",
    "Job",
    "JobError",
    "OptionCheck",
    "job_body",
    "parse_job",
    "peek_task_id",
    "speakers_problem",
]

# Speaker diarization: the counts a job may give (absent or null = let the diarizer find out), each
# at most diarize.max_speakers, which parse_job takes from its caller as it takes max_bytes; that
# key's default and the most it may be set to (more speakers than that is not a conversation the
# diarizer can tell apart, and a bound keeps a job from asking for a clustering of any size).
SPEAKER_OPTIONS = ("speakers", "min_speakers", "max_speakers")
DEFAULT_MAX_SPEAKERS = 10
SPEAKERS_LIMIT = 50

OptionCheck = Callable[[str, Any], Any]
"""``check(name, value)``: a job option's value as its [transcribe] key would take it, or ValueError
saying why not (``functools.partial(config.checked_value, config.TranscribeConfig)``)."""


class JobError(Exception):
    """A job that cannot be done as asked: becomes a ``failed`` completion, never a crash."""

    def __init__(self, code: str, message: str, task_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.task_id = task_id


@dataclass(frozen=True)
class Job:
    task_id: str
    audio_path: str
    language: str | None = None
    task: str = "transcribe"
    formats: tuple[str, ...] = DEFAULT_FORMATS
    word_timestamps: bool = False
    initial_prompt: str | None = None
    condition_on_previous_text: bool | None = None
    no_speech_threshold: float | None = None
    compression_ratio_threshold: float | None = None
    hallucination_silence_threshold: float | None = None
    diarize: bool | None = None  # None: diarize.default decides
    speakers: int | None = None  # the exact number of speakers, when the producer knows it
    min_speakers: int | None = None
    max_speakers: int | None = None


# MassTransit's serializer names C# properties in camelCase (TaskId -> "taskId") unless the
# producer sets [JsonPropertyName("task_id")]; inside its envelope both spellings are accepted.
_CAMEL_CASE = {
    "taskId": "task_id",
    "audioPath": "audio_path",
    "wordTimestamps": "word_timestamps",
    "initialPrompt": "initial_prompt",
    "conditionOnPreviousText": "condition_on_previous_text",
    "noSpeechThreshold": "no_speech_threshold",
    "compressionRatioThreshold": "compression_ratio_threshold",
    "hallucinationSilenceThreshold": "hallucination_silence_threshold",
    "minSpeakers": "min_speakers",
    "maxSpeakers": "max_speakers",
}


def _unwrap_envelope(body: dict[str, Any]) -> dict[str, Any]:
    """Accept MassTransit's envelope ({"messageId", "message": {...job...}}) as well as a bare job."""
    inner = body.get("message")
    if "task_id" not in body and isinstance(inner, dict) and "messageId" in body:
        renamed = {_CAMEL_CASE[k]: v for k, v in inner.items() if k in _CAMEL_CASE}
        return {**renamed, **{k: v for k, v in inner.items() if k not in _CAMEL_CASE}}
    return body


def _is_text(s: str) -> bool:
    """Whether ``s`` can be written as UTF-8: JSON lets a body carry a lone surrogate ("\\ud800"),
    which would fail only when the result files are written, after the transcription."""
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: Any) -> str:
    """A job's value as an error quotes it: repr, cut to 40 characters (a value may be huge)."""
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _task_id_of(body: Any) -> str | None:
    if isinstance(body, dict):
        tid = _unwrap_envelope(body).get("task_id")
        if isinstance(tid, str) and TASK_ID_RE.fullmatch(tid):
            return tid
    return None


def _loads(raw: bytes, max_bytes: int) -> Any:
    """json.loads with a bounded cost: a size cap first, then any failure (deep nesting raises
    RecursionError, not ValueError) becomes an invalid_job error."""
    if len(raw) > max_bytes:
        message = f"body is {len(raw)} bytes; the limit is {max_bytes} (limits.max_job_bytes)"
        raise JobError(ErrorCode.INVALID_JOB, message)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JobError(ErrorCode.INVALID_JOB, f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise JobError(ErrorCode.INVALID_JOB, "body is nested too deeply to be a job") from None
    except Exception as e:  # MemoryError, or anything else json may raise on hostile input
        raise JobError(ErrorCode.INVALID_JOB, f"body cannot be parsed: {type(e).__name__}") from None


def peek_task_id(raw: bytes, max_bytes: int = DEFAULT_MAX_JOB_BYTES) -> str | None:
    """The task id of a body if it has a valid one, without validating the rest."""
    try:
        return _task_id_of(_loads(raw, max_bytes))
    except JobError:
        return None


def job_body(
    task_id: str,
    audio_path: str,
    language: str | None = None,
    formats: list[str] | None = None,
    word_timestamps: bool = False,
    *,
    diarize: bool | None = None,
    speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
) -> bytes:
    """A job as whisperd's own producers (``whisperd submit``, ``whisperd api``) publish it.

    An option left at None is not sent, so the worker's configuration decides it (``diarize``:
    diarize.default); the values are sent as given, for parse_job to check."""
    job: dict[str, Any] = {"task_id": task_id, "audio_path": audio_path}
    if language:
        job["language"] = language
    if formats:
        job["formats"] = formats
    if word_timestamps:
        job["word_timestamps"] = True
    if diarize is not None:
        job["diarize"] = diarize
    for name, count in (("speakers", speakers), ("min_speakers", min_speakers), ("max_speakers", max_speakers)):
        if count is not None:
            job[name] = count
    return json.dumps(job).encode()


def parse_job(
    raw: bytes,
    default_formats: tuple[str, ...] = DEFAULT_FORMATS,
    max_bytes: int = DEFAULT_MAX_JOB_BYTES,
    check_option: OptionCheck | None = None,
    *,
    max_speakers: int = DEFAULT_MAX_SPEAKERS,
) -> Job:
    """Decode and validate a job body; raise JobError with the most specific code.

    The error carries the task id whenever one could be read, so the producer still gets
    a completion for its task. ``check_option`` checks the guard options (GUARD_OPTIONS) a job
    sets, as their [transcribe] keys are checked: the caller has the configuration (the pipeline
    passes it). Without one, a job that sets a guard option is refused: no value a producer sent
    goes to whisper unchecked.

    Diarization: ``diarize`` is true, false, or absent/null for diarize.default. ``speakers`` (an
    exact count) or ``min_speakers``/``max_speakers`` (bounds) are whole numbers from 1 to
    ``max_speakers`` (the caller's diarize.max_speakers), never both kinds. Counts with ``diarize``
    false contradict the job and are refused; counts with ``diarize`` absent are kept, because
    diarize.default may turn it on (and they are unused when it does not): the producer need not
    know the worker's configuration to send them.
    """
    body = _loads(raw, max_bytes)
    if not isinstance(body, dict):
        raise JobError(ErrorCode.INVALID_JOB, f"body must be a JSON object, got {type(body).__name__}")
    body = _unwrap_envelope(body)
    task_id = _task_id_of(body)

    def fail(code: str, message: str) -> JobError:
        return JobError(code, message, task_id)

    if "task_id" not in body:
        raise fail(ErrorCode.INVALID_TASK_ID, "task_id is missing")
    if task_id is None:
        raise fail(ErrorCode.INVALID_TASK_ID, "task_id must be 1-128 characters of A-Z a-z 0-9 . _ -")
    audio_path = body.get("audio_path")
    if not isinstance(audio_path, str) or not audio_path.strip() or "\x00" in audio_path:
        raise fail(ErrorCode.INVALID_AUDIO_PATH, "audio_path must be a non-empty string")
    if not _is_text(audio_path):
        raise fail(ErrorCode.INVALID_AUDIO_PATH, "audio_path holds a lone UTF-16 surrogate: it is not text")
    if len(audio_path.encode(errors="surrogatepass")) > MAX_AUDIO_PATH_BYTES:
        raise fail(ErrorCode.INVALID_AUDIO_PATH, f"audio_path is longer than {MAX_AUDIO_PATH_BYTES} bytes")
    language = body.get("language")
    if language is not None and (not isinstance(language, str) or not language.strip() or len(language) > 64):
        raise fail(ErrorCode.UNSUPPORTED_LANGUAGE, "language must be a language code such as 'es' or be absent")
    task = body.get("task", "transcribe")
    if task not in TASKS:
        raise fail(ErrorCode.UNSUPPORTED_TASK, f"task must be one of {list(TASKS)}, got {task!r}")
    formats = body.get("formats", list(default_formats))
    if not isinstance(formats, list) or not formats or not all(isinstance(f, str) for f in formats):
        raise fail(ErrorCode.UNSUPPORTED_FORMAT, f"formats must be a non-empty list from {list(FORMATS)}")
    unknown = unknown_formats(formats)
    if unknown:
        raise fail(ErrorCode.UNSUPPORTED_FORMAT, f"unsupported formats {unknown}; choose from {list(FORMATS)}")
    word_timestamps = body.get("word_timestamps", False)
    if not isinstance(word_timestamps, bool):
        raise fail(ErrorCode.INVALID_OPTION, "word_timestamps must be true or false")
    prompt = body.get("initial_prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise fail(ErrorCode.INVALID_OPTION, "initial_prompt must be a string")
    if prompt and not _is_text(prompt):
        raise fail(ErrorCode.INVALID_OPTION, "initial_prompt holds a lone UTF-16 surrogate: it is not text")
    if prompt and len(prompt.encode(errors="surrogatepass")) > MAX_PROMPT_BYTES:
        raise fail(
            ErrorCode.INVALID_OPTION,
            f"initial_prompt is longer than {MAX_PROMPT_BYTES} bytes (whisper uses only its last 223 tokens)",
        )
    diarize = body.get("diarize")
    if diarize is not None and not isinstance(diarize, bool):
        raise fail(ErrorCode.INVALID_OPTION, "diarize must be true or false (or null for diarize.default)")
    counts = {name: body.get(name) for name in SPEAKER_OPTIONS}
    problem = speakers_problem(diarize, counts, max_speakers)
    if problem is not None:
        raise fail(ErrorCode.INVALID_OPTION, problem)
    guards = {}
    for name in GUARD_OPTIONS:  # same type and range checks as the [transcribe] keys
        if body.get(name) is not None:
            if check_option is None:
                raise fail(ErrorCode.INVALID_OPTION, f"{name}: cannot be checked here (no [transcribe] keys)")
            try:
                guards[name] = check_option(name, body[name])
            except ValueError as e:  # config.ConfigError is one
                raise fail(ErrorCode.INVALID_OPTION, str(e)) from None
    return Job(
        task_id=task_id,
        audio_path=audio_path,
        language=language.strip().lower() if language else None,
        task=task,
        formats=tuple(dict.fromkeys(formats)),
        word_timestamps=word_timestamps,
        initial_prompt=prompt or None,
        **guards,
        diarize=diarize,
        **counts,
    )


def speakers_problem(
    diarize: bool | None,
    counts: Mapping[str, Any],
    max_speakers: int,
) -> str | None:
    """Why a job's diarization options cannot be taken (None when they can): ``counts`` maps
    SPEAKER_OPTIONS to their values (None = absent). The one check of parse_job, the API's form
    and ``whisperd submit``, so that a producer refuses what a worker would.

    A count is a whole number: JSON's true is a Python int, and 2.0 is not a number of speakers."""
    given = []
    for name in SPEAKER_OPTIONS:
        value = counts.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} must be a whole number, got {_shown(value)}"
        if value < 1:
            return f"{name} must be at least 1, got {_shown(value)}"
        if value > max_speakers:
            return f"{name} is {_shown(value)}; the limit is {max_speakers} (diarize.max_speakers)"
        given.append(name)
    if given and diarize is False:
        return f"{given[0]} is set but diarize is false: speaker counts are for diarized jobs"
    if "speakers" in given and len(given) > 1:
        return "speakers is an exact count: send it or min_speakers/max_speakers, not both"
    low, high = counts.get("min_speakers"), counts.get("max_speakers")
    if low is not None and high is not None and low > high:
        return f"min_speakers ({low}) is more than max_speakers ({high})"
    return None


@dataclass
class Completion:
    task_id: str | None
    status: str
    text: str | None = None
    language: str | None = None
    duration_s: float | None = None
    processing_s: float | None = None
    results: dict[str, str] = field(default_factory=dict)
    error: dict[str, str] | None = None
    worker: str | None = None
    speech_s: float | None = None
    progress: float | None = None  # processing events: the fraction of the audio transcribed so far, 0-1
    audio_done_s: float | None = None  # processing events: seconds of the audio transcribed so far
    speakers: int | None = None  # done completions of diarized jobs: the number of speakers found

    @classmethod
    def failure(cls, err: JobError, worker: str, processing_s: float | None = None) -> Completion:
        return cls(
            task_id=err.task_id,
            status=FAILED,
            error={"code": err.code, "message": err.message},
            worker=worker,
            processing_s=processing_s,
        )

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Completion:
        """Build from a decoded completion; fields a newer whisperd may add are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, raw: bytes, max_bytes: int = MAX_COMPLETION_BYTES) -> Completion:
        """Parse a completion from the wire; raise JobError (invalid_job) on anything that is not one."""
        data = _loads(raw, max_bytes)
        if not isinstance(data, dict) or not isinstance(data.get("status"), str) or "task_id" not in data:
            raise JobError(ErrorCode.INVALID_JOB, "not a completion: a JSON object with task_id and status is expected")
        completion = cls.from_dict(data)
        for name, kinds in _COMPLETION_TYPES.items():
            if not isinstance(getattr(completion, name), kinds):
                raise JobError(ErrorCode.INVALID_JOB, f"not a completion: {name} has the wrong type")
        if isinstance(completion.speakers, bool):  # JSON's true is a Python int, not a count
            raise JobError(ErrorCode.INVALID_JOB, "not a completion: speakers has the wrong type")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in completion.results.items()):
            raise JobError(ErrorCode.INVALID_JOB, "not a completion: results must map formats to paths")
        return completion


_NUMBER = (int, float, type(None))
_COMPLETION_TYPES: dict[str, tuple[type, ...]] = {
    "task_id": (str, type(None)),
    "text": (str, type(None)),
    "language": (str, type(None)),
    "duration_s": _NUMBER,
    "processing_s": _NUMBER,
    "results": (dict,),
    "error": (dict, type(None)),
    "worker": (str, type(None)),
    "speech_s": _NUMBER,
    "progress": _NUMBER,
    "audio_done_s": _NUMBER,
    "speakers": (int, type(None)),
}
