"""The job/completion contract (unit tests of whisperd.contract) and its JSON Schema files."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import jsonschema
import pytest

from whisperd.config import check_job_option
from whisperd.contract import (
    _CAMEL_CASE,
    DEFAULT_MAX_SPEAKERS,
    GUARD_OPTIONS,
    SPEAKER_OPTIONS,
    SPEAKERS_LIMIT,
    Completion,
    ErrorCode,
    Job,
    JobError,
    job_body,
    parse_job,
    peek_task_id,
    speakers_problem,
)

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


# Speaker diarization: diarize and the speaker counts.
def job(**options):
    return json.dumps({"task_id": "t", "audio_path": "x", **options}).encode()


def test_diarization_options_are_parsed_and_default_to_the_config():
    plain = parse_job(job())
    assert (plain.diarize, plain.speakers, plain.min_speakers, plain.max_speakers) == (None, None, None, None)
    exact = parse_job(job(diarize=True, speakers=3))
    assert (exact.diarize, exact.speakers, exact.min_speakers, exact.max_speakers) == (True, 3, None, None)
    bounds = parse_job(job(diarize=True, min_speakers=2, max_speakers=2))
    assert (bounds.speakers, bounds.min_speakers, bounds.max_speakers) == (None, 2, 2)
    assert parse_job(job(diarize=False)).diarize is False
    nulls = parse_job(job(diarize=None, speakers=None, min_speakers=None, max_speakers=None))
    assert (nulls.diarize, nulls.speakers, nulls.min_speakers, nulls.max_speakers) == (None, None, None, None)
    # Counts without diarize: kept, for diarize.default to use if it turns diarization on.
    undecided = parse_job(job(max_speakers=4))
    assert (undecided.diarize, undecided.max_speakers) == (None, 4)
    assert parse_job(job(diarize=True, speakers=10)).speakers == 10, "the default limit is inclusive"
    assert parse_job(job(diarize=True, speakers=25), max_speakers=25).speakers == 25
    for body in (job(diarize=True, speakers=3), job(max_speakers=4), job(diarize=False)):
        jsonschema.validate(json.loads(body), schema("job"))


EXACT = "speakers is an exact count: send it or min_speakers/max_speakers, not both"
NOT_DIARIZED = "is set but diarize is false: speaker counts are for diarized jobs"


@pytest.mark.parametrize(
    ("options", "message", "schema_rejects"),
    [
        ({"diarize": "yes"}, "diarize must be true or false (or null for diarize.default)", True),
        ({"diarize": 1}, "diarize must be true or false (or null for diarize.default)", True),
        ({"speakers": True}, "speakers must be a whole number, got True", True),
        ({"min_speakers": False}, "min_speakers must be a whole number, got False", True),
        ({"max_speakers": 2.5}, "max_speakers must be a whole number, got 2.5", True),
        # JSON Schema's "integer" takes 2.0; the parser wants a whole number as JSON writes one.
        ({"speakers": 2.0}, "speakers must be a whole number, got 2.0", False),
        ({"speakers": "2"}, "speakers must be a whole number, got '2'", True),
        ({"speakers": [2]}, "speakers must be a whole number, got [2]", True),
        ({"speakers": "x" * 10_000}, "speakers must be a whole number, got '" + "x" * 36 + "...", True),
        ({"speakers": 0}, "speakers must be at least 1, got 0", True),
        ({"min_speakers": -3}, "min_speakers must be at least 1, got -3", True),
        ({"speakers": 11}, "speakers is 11; the limit is 10 (diarize.max_speakers)", False),  # the config's bound
        ({"min_speakers": 11}, "min_speakers is 11; the limit is 10 (diarize.max_speakers)", False),
        ({"max_speakers": 51}, "max_speakers is 51; the limit is 10 (diarize.max_speakers)", True),
        ({"speakers": 10**400}, "speakers is 1" + "0" * 36 + "...; the limit is 10 (diarize.max_speakers)", True),
        ({"speakers": 2, "min_speakers": 1}, EXACT, True),
        ({"speakers": 2, "max_speakers": 3}, EXACT, True),
        ({"speakers": 2, "min_speakers": None}, None, False),  # null = absent: nothing to contradict
        ({"min_speakers": 4, "max_speakers": 3}, "min_speakers (4) is more than max_speakers (3)", False),
        ({"diarize": False, "speakers": 2}, "speakers " + NOT_DIARIZED, True),
        ({"diarize": False, "max_speakers": 2}, "max_speakers " + NOT_DIARIZED, True),
        ({"diarize": False, "min_speakers": 2, "max_speakers": 1}, "min_speakers " + NOT_DIARIZED, True),
    ],
)
def test_bad_diarization_options_are_invalid_options_naming_the_field(options, message, schema_rejects):
    body = job(**options)
    if message is None:
        assert parse_job(body).speakers == options["speakers"]
    else:
        with pytest.raises(JobError) as e:
            parse_job(body)
        assert (e.value.code, e.value.task_id, e.value.message) == (ErrorCode.INVALID_OPTION, "t", message)
        assert len(e.value.message) < 200
    valid = jsonschema.Draft202012Validator(schema("job")).is_valid(json.loads(body))
    assert valid is not schema_rejects


def test_the_speaker_limit_is_the_callers():
    body = job(diarize=True, max_speakers=3)
    assert parse_job(body, max_speakers=3).max_speakers == 3
    with pytest.raises(JobError) as e:
        parse_job(body, max_speakers=2)
    assert (e.value.code, e.value.message) == (ErrorCode.INVALID_OPTION,
                                               "max_speakers is 3; the limit is 2 (diarize.max_speakers)")  # fmt: skip
    assert inspect.signature(parse_job).parameters["max_speakers"].default == DEFAULT_MAX_SPEAKERS == 10


def test_speakers_problem_is_the_check_every_producer_shares():
    counts = {"speakers": None, "min_speakers": 2, "max_speakers": 5}
    assert speakers_problem(True, counts, 10) is None
    assert speakers_problem(None, counts, 10) is None
    assert speakers_problem(False, counts, 10) == (
        "min_speakers is set but diarize is false: speaker counts are for diarized jobs"
    )
    assert speakers_problem(True, counts, 4) == "max_speakers is 5; the limit is 4 (diarize.max_speakers)"
    assert speakers_problem(False, {}, 10) is None, "diarize false alone is fine"


def test_diarization_options_in_a_masstransit_envelope_in_camel_case():
    inner = {"taskId": "t", "audioPath": "x", "diarize": True, "minSpeakers": 2, "maxSpeakers": 4}
    wrapped = {"messageId": "m", "message": inner}
    parsed = parse_job(json.dumps(wrapped).encode())
    assert (parsed.diarize, parsed.speakers, parsed.min_speakers, parsed.max_speakers) == (True, None, 2, 4)
    assert parsed == parse_job(job(diarize=True, min_speakers=2, max_speakers=4))
    exact = {"messageId": "m", "message": {"taskId": "t", "audioPath": "x", "diarize": True, "speakers": 3}}
    assert parse_job(json.dumps(exact).encode()).speakers == 3
    with pytest.raises(JobError) as e:
        parse_job(json.dumps({"messageId": "m", "message": {**inner, "minSpeakers": 5}}).encode())
    assert (e.value.code, e.value.message) == (
        ErrorCode.INVALID_OPTION,
        "min_speakers (5) is more than max_speakers (4)",
    )


def test_job_body_sends_the_diarization_options_only_when_set():
    assert json.loads(job_body("t", "x")) == {"task_id": "t", "audio_path": "x"}
    assert json.loads(job_body("t", "x", diarize=False)) == {"task_id": "t", "audio_path": "x", "diarize": False}
    body = job_body("t", "x", "es", ["srt"], True, diarize=True, min_speakers=2, max_speakers=3)
    assert json.loads(body) == {"task_id": "t", "audio_path": "x", "language": "es", "formats": ["srt"],
                                "word_timestamps": True, "diarize": True, "min_speakers": 2,
                                "max_speakers": 3}  # fmt: skip
    parsed = parse_job(body)
    assert (parsed.diarize, parsed.speakers, parsed.min_speakers, parsed.max_speakers) == (True, None, 2, 3)
    parsed = parse_job(job_body("t", "x", diarize=True, speakers=4))
    assert (parsed.diarize, parsed.speakers, parsed.min_speakers, parsed.max_speakers) == (True, 4, None, None)
    jsonschema.validate(json.loads(body), schema("job"))


def test_a_completion_carries_the_speakers_found():
    done = Completion("t", "done", "hi", "en", 1.0, 0.5, {"txt": "/r/t.txt"}, None, "h:worker-1:9", speakers=3)
    data = json.loads(done.to_json())
    assert data["speakers"] == 3
    jsonschema.validate(data, schema("completion"))
    assert Completion.from_json(done.to_json()) == done
    plain = json.loads(Completion("t", "done", "hi").to_json())
    assert plain["speakers"] is None, "every completion has the field, null when not diarized"
    jsonschema.validate(plain, schema("completion"))
    assert Completion.from_json(b'{"task_id": "t", "status": "done", "speakers": 0}').speakers == 0
    for bad in (b'"two"', b"true", b"2.5"):
        raw = b'{"task_id": "t", "status": "done", "speakers": ' + bad + b"}"
        with pytest.raises(JobError) as e:
            Completion.from_json(raw)
        assert e.value.message == "not a completion: speakers has the wrong type"
        assert not jsonschema.Draft202012Validator(schema("completion")).is_valid(json.loads(raw))


def test_the_schemas_list_the_contracts_fields():
    job_fields = {f.name for f in dataclasses.fields(Job)}
    assert set(schema("job")["properties"]) == job_fields
    completion = schema("completion")
    completion_fields = [f.name for f in dataclasses.fields(Completion)]
    assert set(completion["properties"]) == set(completion_fields)
    assert completion["required"] == completion_fields, "to_json writes every field, in this order"
    camel = {k for k in _CAMEL_CASE.values()}
    assert camel <= job_fields
    for name in SPEAKER_OPTIONS:
        assert schema("job")["properties"][name]["maximum"] == SPEAKERS_LIMIT
