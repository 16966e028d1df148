"""``whisperd api`` as a real uvicorn process, driven over HTTP, with a real daemon behind it.

Hostile requests and result-queue messages are in test_api_hostile.py.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests
from api_process import Api
from clips import JFK, SPANISH
from conftest import wait_for

from whisperd.api import TaskStore, view
from whisperd.contract import Completion


@pytest.fixture
def setup(broker, daemon_factory, tmp_path):
    d = daemon_factory(events={"progress": True}, api={"state_dir": str(tmp_path / "api-state")}).start()
    api = Api(d.config_path, tmp_path / "api.log")
    yield d, api
    if api.proc is not None and api.proc.poll() is None:
        api.stop()


def test_upload_status_results_and_a_restart(broker, setup, tmp_path):
    d, api = setup
    api.start()
    r = api.post(JFK.path, "Discurso JFK.flac", language="en", formats="json,srt", word_timestamps="true")
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    assert r.json() == {"task_id": task_id, "status": "En proceso"}
    assert r.headers["location"] == f"/transcriptions/{task_id}"

    body = api.wait_final(task_id)
    assert (body["status"], body["state"], body["text"]) == ("Completado", "done", JFK.reference)
    assert body["filename"] == "Discurso JFK.flac" and body["language"] == "en"
    assert [h["state"] for h in body["history"]] == ["queued", "processing", "done"], "En curso was recorded"
    assert sorted(body["results"]) == ["json", "srt"]
    srt = requests.get(api.url + body["results"]["srt"], timeout=10)
    assert srt.status_code == 200 and "-->" in srt.text and "country" in srt.text
    words = requests.get(api.url + body["results"]["json"], timeout=10).json()["segments"][0]["words"]
    assert words, "word_timestamps reached the job"

    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    failed = api.wait_final(api.post(bad).json()["task_id"])
    assert (failed["status"], failed["error"]["code"], failed["text"]) == ("Error", "invalid_audio", None)
    # api.upload_retention_s = 0: an upload goes as soon as its result (done or failed) is recorded
    wait_for(lambda: not os.listdir(d.media / "uploads"), 10, "both uploads removed")

    # Stop the API; a completion that arrives meanwhile waits in the result queue.
    assert api.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "Application shutdown complete" in api.log_path.read_text()
    d.stage(SPANISH.path, "other-producer.wav")
    broker.publish({"task_id": "while-api-down", "audio_path": "other-producer.wav"})
    wait_for(lambda: (d.results / "while-api-down.txt").exists(), 60, "the job done while the API is down")
    wait_for(
        lambda: broker.ch.queue_declare(broker.result_queue, passive=True).method.message_count == 2,
        30,
        "processing + done waiting in the result queue",
    )

    api.start()
    again = api.get(task_id).json()
    assert again["text"] == JFK.reference and again["status"] == "Completado", "answered from disk after a restart"
    late = api.wait_final("while-api-down")
    assert (late["status"], late["text"]) == ("Completado", SPANISH.reference)
    assert late["filename"] is None, "known only from its completion: queued by another producer"
    assert (d.media / "other-producer.wav").exists(), "another producer's audio is not the API's to remove"
    wait_for(
        lambda: broker.ch.queue_declare(broker.result_queue, passive=True).method.message_count == 0,
        10,
        "the completions acked",
    )


def test_uploads_kept_for_their_retention_and_orphans_swept(broker, daemon_factory, tmp_path):
    retention = 10.0
    d = daemon_factory(api={"state_dir": str(tmp_path / "api-state"), "upload_retention_s": retention}).start()
    uploads = d.media / "uploads"
    uploads.mkdir()
    # Left by an API that died: an upload it never recorded, one cut off mid-way; and a file not its own.
    orphan, partial, fresh, foreign = (uploads / n for n in ("a" * 32 + ".wav", "." + "b" * 32 + ".upload",
                                                               "c" * 32 + ".wav", "notes.txt"))  # fmt: skip
    two_hours_ago = time.time() - 7200
    for f in (orphan, partial, fresh, foreign):
        f.write_bytes(b"x")
        if f is not fresh:
            os.utime(f, (two_hours_ago, two_hours_ago))
    api = Api(d.config_path, tmp_path / "api.log").start()
    try:
        wait_for(lambda: not orphan.exists() and not partial.exists(), 30, "abandoned uploads removed")
        assert fresh.exists(), "an unrecorded upload younger than an hour may still be on its way"
        assert foreign.exists(), "files the API did not name are left alone"

        task_id = api.post(JFK.path).json()["task_id"]
        done = api.wait_final(task_id)
        finished = time.monotonic()
        upload = uploads / f"{task_id}.flac"
        assert done["status"] == "Completado"
        assert upload.read_bytes() == JFK.path.read_bytes(), "kept, byte for byte, during the retention"
        wait_for(lambda: not upload.exists(), retention + 30, "the upload removed after its retention")
        assert time.monotonic() - finished > retention / 2, "not removed long before the retention ran out"
        assert api.get(task_id).json()["text"] == JFK.reference, "the record stays"
    finally:
        api.stop()


def test_a_late_processing_event_never_undoes_a_result(tmp_path):
    store = TaskStore(str(tmp_path))
    store.create("t1", "a.wav", "uploads/t1.wav")
    store.apply(Completion("t1", "done", text="hola"))
    assert store.apply(Completion("t1", "processing")) is None  # redelivered or reordered: ignored
    record = store.get("t1")
    assert record["state"] == "done" and record["completion"]["text"] == "hola"
    assert [h["state"] for h in record["history"]] == ["queued", "done"]
    assert sorted(os.listdir(tmp_path)) == ["t1.json"], "no temp files left behind"


def test_processing_events_show_how_far_the_worker_is_until_the_result(tmp_path):
    store = TaskStore(str(tmp_path))
    store.create("t1", "a.wav", "uploads/t1.wav")
    store.apply(Completion("t1", "processing", duration_s=600.0, progress=0.0, audio_done_s=0.0))
    store.apply(Completion("t1", "processing", duration_s=600.0, progress=0.25, audio_done_s=150.0))
    shown = view(store.get("t1"), "http://x/")
    assert (shown["status"], shown["progress"]) == ("En curso", {"fraction": 0.25, "audio_done_s": 150.0,
                                                                  "duration_s": 600.0})  # fmt: skip
    store.apply(Completion("t1", "done", text="hola"))
    assert view(store.get("t1"), "http://x/")["progress"] is None


def test_a_task_keeps_a_bounded_history(tmp_path):
    store = TaskStore(str(tmp_path))
    for _ in range(100):  # a producer repeating "processing" cannot grow the record without end
        store.apply(Completion("t1", "processing"))
    assert len(store.get("t1")["history"]) == 20
