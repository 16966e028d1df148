"""``events.progress``: a ``processing`` message when a job starts, on a real daemon and broker."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from conftest import submit

from devkit.clips import JFK
from whisperd import jobs

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "whisperd/schema/completion.schema.json").read_text())


def test_processing_then_done_on_the_result_queue_and_reply_to(broker, daemon_factory):
    d = daemon_factory(events={"progress": True}).start()
    d.stage(JFK.path, "jfk.flac")
    reply = broker.ch.queue_declare("", exclusive=True).method.queue
    broker.publish({"task_id": "prog-1", "audio_path": "jfk.flac"}, reply_to=reply, correlation_id="corr-7")
    broker.publish({"task_id": "prog-missing", "audio_path": "missing.wav"})

    first, second, third = broker.completions(3, 60)
    for c in (first, second, third):
        jsonschema.validate(c, SCHEMA)
    assert (first["task_id"], first["status"]) == ("prog-1", "processing")
    assert first["text"] is None and first["results"] == {} and first["error"] is None
    assert abs(first["duration_s"] - 11.0) < 0.1, "the audio length is known once it is decoded"
    assert first["worker"] == second["worker"]
    assert (second["task_id"], second["status"], second["text"]) == ("prog-1", "done", JFK.reference)
    # A job that fails before transcription starts gets its failure only, no "processing".
    assert (third["task_id"], third["status"], third["error"]["code"]) == ("prog-missing", "failed", "file_not_found")

    props, note = broker.get(reply, 10)
    assert (note["status"], props.correlation_id) == ("processing", "corr-7")
    props, done = broker.get(reply, 10)
    assert (done["status"], props.correlation_id) == ("done", "corr-7")
    assert props.delivery_mode == 2 and props.content_type == "application/json"


def test_no_processing_message_by_default(broker, daemon):
    daemon.stage(JFK.path, "jfk.flac")
    broker.publish({"task_id": "quiet-1", "audio_path": "jfk.flac"})
    [c] = broker.completions(1, 60)
    assert c["status"] == "done"
    assert broker.get(broker.result_queue, 2) is None


@pytest.mark.parametrize("engine", ["openai-whisper", "faster-whisper"])
def test_a_long_job_reports_how_far_it_is_every_few_seconds(broker, daemon_factory, real_weights, slow_job, engine):
    model = slow_job.section if engine == "openai-whisper" else real_weights.section("base", engine)
    d = daemon_factory(model=model, events={"progress": True}).start(timeout=300)
    submit(broker, d, slow_job.audio, "long")
    got = broker.completions(1, 600)
    while got[-1]["status"] == "processing":
        got += broker.completions(1, 600)
    *notes, done = got
    for c in got:
        jsonschema.validate(c, SCHEMA)
    assert done["status"] == "done" and done["progress"] is None
    fractions = [n["progress"] for n in notes]
    assert len(notes) >= 2 and fractions[0] == 0.0, fractions
    assert fractions == sorted(set(fractions)) and fractions[-1] < 1.0, fractions
    # progress is rounded to 0.001 and audio_done_s to 0.1 s: on 230 s of audio they may disagree by 0.17 s
    rounding = 0.0005 * done["duration_s"] + 0.05 + 1e-6
    for n in notes:
        assert n["audio_done_s"] == pytest.approx(n["progress"] * done["duration_s"], abs=rounding)
    assert len(notes) <= 2 + done["processing_s"] / jobs.PROGRESS_INTERVAL_S, "more often than every few seconds"
