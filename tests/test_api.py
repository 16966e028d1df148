"""``whisperd api`` as a real uvicorn process, driven over HTTP, with a real daemon behind it.

Hostile requests and result-queue messages are in test_api_hostile.py.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
import requests
from api_process import Api
from conftest import wait_for

from devkit.clips import JFK, SPANISH
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

    # Stop the API; completions that arrive meanwhile wait in the result queue.
    assert api.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "Application shutdown complete" in api.log_path.read_text()
    # A task the API queued just before it stopped (its record and upload in place), and another
    # producer's job, published straight to the job queue.
    late_id = uuid.uuid4().hex
    late_audio = d.stage(SPANISH.path, f"uploads/{late_id}.wav")
    TaskStore(str(tmp_path / "api-state")).create(late_id, "tarde.wav", late_audio)
    broker.publish({"task_id": late_id, "audio_path": late_audio})
    d.stage(SPANISH.path, "other-producer.wav")
    broker.publish({"task_id": "other-producer", "audio_path": "other-producer.wav"})
    done_while_down = [d.results / f"{t}.txt" for t in (late_id, "other-producer")]
    wait_for(lambda: all(p.exists() for p in done_while_down), 60, "the jobs done while the API is down")
    wait_for(
        lambda: broker.ch.queue_declare(broker.result_queue, passive=True).method.message_count == 4,
        30,
        "processing + done of both waiting in the result queue",
    )

    api.start()
    again = api.get(task_id).json()
    assert again["text"] == JFK.reference and again["status"] == "Completado", "answered from disk after a restart"
    late = api.wait_final(late_id)
    assert (late["status"], late["text"], late["filename"]) == ("Completado", SPANISH.reference, "tarde.wav")
    wait_for(lambda: not (d.media / late_audio).exists(), 10, "its upload removed")
    assert api.get("other-producer").status_code == 404, "another producer's task is not the API's to record"
    assert (d.media / "other-producer.wav").exists(), "another producer's audio is not the API's to remove"
    wait_for(
        lambda: broker.ch.queue_declare(broker.result_queue, passive=True).method.message_count == 0,
        10,
        "the completions acked",
    )


def test_a_direct_job_reusing_a_finished_tasks_id_changes_nothing(broker, setup):
    d, api = setup
    api.start()
    task_id = api.post(JFK.path, formats="txt").json()["task_id"]
    assert api.wait_final(task_id)["text"] == JFK.reference
    # Published straight to the job queue with the API task's id: the worker answers task_id_conflict.
    broker.publish({"task_id": task_id, "audio_path": d.stage(SPANISH.path, "intruder.wav"), "formats": ["txt"]})
    ignored = f"ignoring a failed completion (task_id_conflict) of task {task_id}: it is done already"
    wait_for(lambda: ignored in api.log_path.read_text(), 60, "the conflict's completion ignored")
    shown = api.get(task_id).json()
    assert (shown["status"], shown["text"], shown["error"]) == ("Completado", JFK.reference, None), shown
    txt = requests.get(f"{api.url}/transcriptions/{task_id}/result.txt", timeout=10)
    assert txt.status_code == 200 and "country" in txt.text


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
    assert store.apply(Completion("t1", "processing"))[0] == "unchanged"  # redelivered or reordered: ignored
    assert store.apply(Completion("t1", "failed", error={"code": "task_id_conflict"}))[0] == "late"
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


def test_only_tasks_the_api_created_are_recorded(tmp_path):
    store = TaskStore(str(tmp_path))
    assert store.apply(Completion("invoice-42", "done", text="forged")) == ("foreign", None)
    assert os.listdir(tmp_path) == []


def test_a_task_keeps_a_bounded_history(tmp_path):
    store = TaskStore(str(tmp_path))
    store.create("t1", "a.wav", "uploads/t1.wav")
    for _ in range(100):  # a producer repeating "processing" cannot grow the record without end
        store.apply(Completion("t1", "processing"))
    assert len(store.get("t1")["history"]) == 20
