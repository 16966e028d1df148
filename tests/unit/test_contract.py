"""The job/completion contract (unit tests of whisperd.contract) and its JSON Schema files."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from whisperd.config import check_job_option
from whisperd.contract import GUARD_OPTIONS, Completion, ErrorCode, JobError, parse_job, peek_task_id

SCHEMA = Path(__file__).resolve().parents[2] / "whisperd" / "schema"


def schema(name):
    return json.loads((SCHEMA / f"{name}.schema.json").read_text())


def test_minimal_job_gets_defaults_and_ignores_unknown_fields():
    job = parse_job(b'{"task_id": "a-1", "audio_path": "x.wav", "uploader": "api"}')
    assert (job.task_id, job.audio_path, job.language, job.task, job.formats) == (
        "a-1", "x.wav", None, "transcribe", ("json", "txt"),
    )  # fmt: skip


def test_full_job_and_masstransit_envelope():
    inner = {"task_id": "t.2", "audio_path": "a/b c.mp3", "language": "ES", "task": "translate",
             "formats": ["srt", "vtt"], "word_timestamps": True, "initial_prompt": "Hola"}  # fmt: skip
    job = parse_job(json.dumps(inner).encode())
    assert (job.language, job.task, job.formats, job.word_timestamps) == ("es", "translate", ("srt", "vtt"), True)
    wrapped = {"messageId": "abc", "messageType": ["urn:message:Api:Transcribe"], "message": inner}
    assert parse_job(json.dumps(wrapped).encode()) == job
    jsonschema.validate(inner, schema("job"))


@pytest.mark.parametrize(
    ("body", "code", "task_id", "schema_rejects"),
    [
        (b"\xff\xfe", ErrorCode.INVALID_JOB, None, True),
        (b"[1, 2]", ErrorCode.INVALID_JOB, None, True),
        (b'{"audio_path": "x"}', ErrorCode.INVALID_TASK_ID, None, True),
        (b'{"task_id": "../x", "audio_path": "x"}', ErrorCode.INVALID_TASK_ID, None, True),
        (b'{"task_id": "' + b"a" * 129 + b'", "audio_path": "x"}', ErrorCode.INVALID_TASK_ID, None, True),
        (b'{"task_id": "t", "audio_path": ""}', ErrorCode.INVALID_AUDIO_PATH, "t", True),
        (b'{"task_id": "t", "audio_path": 5}', ErrorCode.INVALID_AUDIO_PATH, "t", True),
        (b'{"task_id": "t", "audio_path": "x", "task": "summarise"}', ErrorCode.UNSUPPORTED_TASK, "t", True),
        (b'{"task_id": "t", "audio_path": "x", "formats": ["pdf"]}', ErrorCode.UNSUPPORTED_FORMAT, "t", True),
        (b'{"task_id": "t", "audio_path": "x", "formats": []}', ErrorCode.UNSUPPORTED_FORMAT, "t", True),
        (b'{"task_id": "t", "audio_path": "x", "language": 7}', ErrorCode.UNSUPPORTED_LANGUAGE, "t", True),
        (b'{"task_id": "t", "audio_path": "x", "word_timestamps": "yes"}', ErrorCode.INVALID_OPTION, "t", True),
        (b"[" * 60000, ErrorCode.INVALID_JOB, None, True),
        (b'{"task_id": "t", "audio_path": "' + b"x" * 70000 + b'"}', ErrorCode.INVALID_JOB, None, True),
        (b'{"task_id": "t", "audio_path": "' + b"x" * 4097 + b'"}', ErrorCode.INVALID_AUDIO_PATH, "t", True),
        (
            b'{"task_id": "t", "audio_path": "x", "initial_prompt": "' + b"a" * 4097 + b'"}',
            ErrorCode.INVALID_OPTION,
            "t",
            True,
        ),
        (
            ('{"task_id": "t", "audio_path": "x", "initial_prompt": "' + "ñ" * 2049 + '"}').encode(),
            ErrorCode.INVALID_OPTION,
            "t",
            False,  # JSON Schema's maxLength counts characters: a byte limit is the parser's alone
        ),  # 4098 bytes in 2049 characters
    ],
)
def test_invalid_jobs_get_specific_codes(body, code, task_id, schema_rejects):
    with pytest.raises(JobError) as e:
        parse_job(body)
    assert (e.value.code, e.value.task_id) == (code, task_id)
    assert peek_task_id(body) == task_id
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        assert schema_rejects, "not JSON: no schema can accept it"
        return
    valid = jsonschema.Draft202012Validator(schema("job")).is_valid(document)
    assert valid is not schema_rejects


def test_the_body_limit_is_the_configured_one():
    body = b'{"task_id": "t", "audio_path": "x", "pad": "' + b"x" * 2000 + b'"}'
    assert parse_job(body).task_id == "t"
    with pytest.raises(JobError, match="limit is 1024"):
        parse_job(body, max_bytes=1024)


def test_completions_from_the_wire_ignore_unknown_fields_and_refuse_wrong_types():
    c = Completion.from_json(b'{"task_id": "t", "status": "done", "text": "hi", "added_later": {"x": 1}}')
    assert (c.task_id, c.status, c.text) == ("t", "done", "hi")
    bad_ones = [
        b"[]",
        b'{"text": "no status"}',
        b'{"status": "done"}',
        b'{"task_id": "t", "status": "done", "duration_s": "long"}',
        b'{"task_id": "t", "status": "done", "results": {"txt": 5}}',
        b"[" * 60000,
    ]
    for bad in bad_ones:
        with pytest.raises(JobError):
            Completion.from_json(bad)


def test_schema_rejects_what_the_parser_rejects():
    validator = jsonschema.Draft202012Validator(schema("job"))
    assert not validator.is_valid({"task_id": "../x", "audio_path": "x"})
    assert not validator.is_valid({"task_id": "t", "audio_path": "x", "formats": ["pdf"]})
    assert not validator.is_valid({"audio_path": "x"})


def test_completions_match_the_schema():
    done = Completion("t", "done", "hi", "en", 1.0, 0.5, {"txt": "/r/t.txt"}, None, "h:worker-1:9")
    failed = Completion.failure(JobError(ErrorCode.FILE_NOT_FOUND, "missing", "t"), "h:worker-1:9")
    for c in (done, failed):
        jsonschema.validate(json.loads(c.to_json()), schema("completion"))
        assert Completion.from_json(c.to_json()) == c


def test_guard_options_are_checked_like_their_config_keys():
    body = {"task_id": "t", "audio_path": "x", "condition_on_previous_text": False, "no_speech_threshold": 1,
            "compression_ratio_threshold": 2.0, "hallucination_silence_threshold": None}  # fmt: skip
    job = parse_job(json.dumps(body).encode(), check_option=check_job_option)
    guards = (job.condition_on_previous_text, job.no_speech_threshold, job.compression_ratio_threshold)
    assert guards == (False, 1.0, 2.0)
    assert job.hallucination_silence_threshold is None  # null = the [transcribe] default
    jsonschema.validate(body, schema("job"))
    wrapped = {"messageId": "m", "message": {"taskId": "t", "audioPath": "x", "conditionOnPreviousText": False,
                                             "noSpeechThreshold": 1, "compressionRatioThreshold": 2.0}}  # fmt: skip
    assert parse_job(json.dumps(wrapped).encode(), check_option=check_job_option) == job
    validator = jsonschema.Draft202012Validator(schema("job"))
    bad = [
        ({"condition_on_previous_text": "no"}, "condition_on_previous_text: must be true or false (got 'no')"),
        ({"no_speech_threshold": 1.5}, "no_speech_threshold: must be between 0 and 1 (got 1.5)"),
        ({"no_speech_threshold": True}, "no_speech_threshold: must be a number (got True)"),
        ({"compression_ratio_threshold": 0.5}, "compression_ratio_threshold: must be between 1 and 100"),
        ({"hallucination_silence_threshold": -1}, "hallucination_silence_threshold: must be between 0 and 30"),
        ({"hallucination_silence_threshold": 10**400}, "hallucination_silence_threshold: must be between 0 and 30"),
        ({"no_speech_threshold": "x" * 10_000}, "no_speech_threshold: must be a number (got 'xxxxxx"),
    ]
    for option, message in bad:
        with pytest.raises(JobError) as e:
            parse_job(json.dumps({"task_id": "t", "audio_path": "x", **option}).encode(), check_option=check_job_option)
        assert (e.value.code, e.value.task_id) == (ErrorCode.INVALID_OPTION, "t")
        assert e.value.message.startswith(message) and len(e.value.message) < 200
        assert not validator.is_valid({"task_id": "t", "audio_path": "x", **option})
    for raw in (b"NaN", b"Infinity", b"-Infinity"):  # Python's json accepts them; JSON does not
        with pytest.raises(JobError) as e:
            parse_job(
                b'{"task_id": "t", "audio_path": "x", "compression_ratio_threshold": ' + raw + b"}",
                check_option=check_job_option,
            )
        assert e.value.code == ErrorCode.INVALID_OPTION
    # Without the [transcribe] keys to check them against, a guard option is refused, never passed on unchecked.
    with pytest.raises(JobError) as e:
        parse_job(json.dumps({"task_id": "t", "audio_path": "x", "no_speech_threshold": 0.5}).encode())
    assert (e.value.code, e.value.task_id) == (ErrorCode.INVALID_OPTION, "t")
    nulls = {"task_id": "t", "audio_path": "x", **dict.fromkeys(GUARD_OPTIONS)}  # null = the default: nothing to check
    assert parse_job(json.dumps(nulls).encode()).no_speech_threshold is None
