"""Producers that are not whisperd: jobs published by amqp-publish (C, librabbitmq), bare and in
MassTransit's envelope, with the AMQP properties a .NET producer sets (docs/dotnet.md)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import jsonschema
import pytest
from conftest import BROKER_URL

from devkit.clips import JFK, SPANISH
from whisperd.contract import ErrorCode, JobError, parse_job

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "whisperd/schema/completion.schema.json").read_text())


def amqp_publish(queue: str, body: dict, content_type: str, reply_to: str | None = None, **headers: str) -> None:
    """Publish like a foreign client: persistent, explicit content type, optional reply_to and headers."""
    cmd = ["amqp-publish", "--url", BROKER_URL.replace("%2F", "%2f"), "-r", queue, "-p", "-C", content_type]
    if reply_to:
        cmd += ["-t", reply_to]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    subprocess.run([*cmd, "-b", json.dumps(body)], check=True, timeout=30)


def masstransit_envelope(message: dict, destination: str) -> dict:
    """The JSON envelope MassTransit (v8, System.Text.Json) wraps every message in."""
    return {
        "messageId": str(uuid.uuid4()),
        "requestId": None,
        "correlationId": str(uuid.uuid4()),
        "conversationId": str(uuid.uuid4()),
        "initiatorId": None,
        "sourceAddress": "rabbitmq://localhost/apihost_dotnet_bus_6y1oyyrqcyyb7ds4bdq3xwyeaq?temporary=true",
        "destinationAddress": f"rabbitmq://localhost/{destination}",
        "responseAddress": None,
        "faultAddress": None,
        "messageType": ["urn:message:Transcriptions.Contracts:TranscriptionJob"],
        "message": message,
        "expirationTime": None,
        "sentTime": "2026-01-12T15:30:00.1234567Z",
        "headers": {},
        "host": {
            "machineName": "apihost",
            "processName": "Transcriptions.Api",
            "processId": 4242,
            "assembly": "Transcriptions.Api",
            "assemblyVersion": "1.0.0.0",
            "frameworkVersion": "8.0.11",
            "massTransitVersion": "8.3.4.0",
            "operatingSystemVersion": "Unix 6.1.0.0",
        },
    }


def test_bare_json_job_with_reply_to_from_amqp_publish(broker, daemon):
    daemon.stage(JFK.path, "uploads/net-1.flac")
    reply = broker.ch.queue_declare("api.replies." + uuid.uuid4().hex[:6], exclusive=True).method.queue
    job = {"task_id": "net-1", "audio_path": "uploads/net-1.flac", "language": "en", "formats": ["json", "srt"]}
    amqp_publish(broker.job_queue, job, "application/json", reply_to=reply, **{"X-Source": "dotnet-api"})
    props, c = broker.get(reply, 60)
    jsonschema.validate(c, SCHEMA)
    assert (c["task_id"], c["status"], c["text"]) == ("net-1", "done", JFK.reference)
    # amqp-publish cannot set correlation_id; the completion then carries the task id in it.
    assert props.correlation_id == "net-1" and props.message_id == "net-1:done"
    assert props.content_type == "application/json" and props.delivery_mode == 2
    assert set(c["results"]) == {"json", "srt"}
    [shared] = broker.completions(1, 10)
    assert shared == c, "the shared result queue gets the same completion"


@pytest.mark.parametrize("naming", ["camelCase", "snake_case"])
def test_masstransit_envelope_from_amqp_publish(broker, daemon, naming):
    daemon.stage(SPANISH.path, "uploads/mt.wav")
    if naming == "camelCase":  # MassTransit's default serializer naming for C# properties
        message = {"taskId": f"mt-{naming}", "audioPath": "uploads/mt.wav", "language": "es", "wordTimestamps": True}
    else:  # properties annotated with [JsonPropertyName("task_id")] etc.
        message = {"task_id": f"mt-{naming}", "audio_path": "uploads/mt.wav", "language": "es", "word_timestamps": True}
    envelope = masstransit_envelope(message, broker.job_queue)
    amqp_publish(broker.job_queue, envelope, "application/vnd.masstransit+json", **{"MT-Host-MachineName": "apihost"})
    [c] = broker.completions(1, 60)
    assert (c["task_id"], c["status"], c["language"]) == (f"mt-{naming}", "done", "es"), c
    assert c["text"] == SPANISH.reference
    segments = json.loads((daemon.results / f"mt-{naming}.json").read_text())["segments"]
    assert all(s["words"] for s in segments), "wordTimestamps inside the envelope was honoured"


def test_envelope_spellings_parse_to_the_same_job():
    snake = {"task_id": "t1", "audio_path": "a.wav", "word_timestamps": True, "initial_prompt": "Kennedy"}
    camel = {"taskId": "t1", "audioPath": "a.wav", "wordTimestamps": True, "initialPrompt": "Kennedy"}
    bare = parse_job(json.dumps(snake).encode())
    for message in (snake, camel):
        assert parse_job(json.dumps(masstransit_envelope(message, "q")).encode()) == bare
    # Outside an envelope only the documented snake_case names count.
    with pytest.raises(JobError, match="task_id is missing") as refused:
        parse_job(json.dumps(camel).encode())
    assert refused.value.code == ErrorCode.INVALID_TASK_ID
