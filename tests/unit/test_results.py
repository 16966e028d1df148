"""Result files (unit tests of whisperd.results with whisper's real writers)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from whisperd import results
from whisperd.contract import Completion, Job, JobError
from whisperd.results import AudioIdentity, ResultStore

AUDIO = AudioIdentity(100, "a" * 64)

RESULT = {
    "text": " Hola mundo.",
    "language": "es",
    "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": 1.5, "text": " Hola mundo.", "tokens": [1, 2]}],
}


def test_every_format_is_written_with_whispers_writers(tmp_path):
    store = ResultStore(str(tmp_path))
    paths = store.write("t1", RESULT, ("json", "txt", "srt", "vtt", "tsv"))
    assert json.loads(open(paths["json"]).read())["segments"][0]["text"] == " Hola mundo."
    assert open(paths["txt"]).read() == "Hola mundo.\n"
    assert "00:00:00,000 --> 00:00:01,500" in open(paths["srt"]).read()
    assert open(paths["vtt"]).read().startswith("WEBVTT")
    assert open(paths["tsv"]).read().splitlines()[1] == "0\t1500\tHola mundo."
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".whisperd",
        "t1.json",
        "t1.srt",
        "t1.tsv",
        "t1.txt",
        "t1.vtt",
    ]


def test_rewrite_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    store = ResultStore(str(tmp_path))
    store.write("t1", RESULT, ("txt",))
    store.write("t1", {**RESULT, "segments": [{**RESULT["segments"][0], "text": " Adiós."}]}, ("txt",))
    assert (tmp_path / "t1.txt").read_text() == "Adiós.\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_lookup_only_answers_the_same_job_with_intact_files(tmp_path):
    store = ResultStore(str(tmp_path))
    job = Job("t1", "a.wav")
    paths = store.write("t1", RESULT, job.formats)
    done = Completion("t1", "done", "Hola mundo.", "es", 1.5, 0.1, paths, None, "w")
    size = lambda: AUDIO  # noqa: E731
    assert store.lookup(job, size) is None
    store.commit(job, done, AUDIO)
    assert store.lookup(job, size) == done
    assert store.lookup(job, lambda: None) == done  # the upload was removed after the result
    (tmp_path / "t1.txt").unlink()
    assert store.lookup(job, size) is None


@pytest.mark.parametrize(
    "other, size",
    [
        (Job("t1", "other.wav"), AUDIO),
        (Job("t1", "a.wav", language="en"), AUDIO),
        (Job("t1", "a.wav"), AudioIdentity(101, AUDIO.sha256)),
        (Job("t1", "a.wav"), AudioIdentity(100, "f" * 64)),  # same size, other content
    ],
    ids=["audio_path", "options", "audio_size", "audio_content"],
)
def test_a_reused_task_id_for_another_job_is_a_conflict(tmp_path, other, size):
    store = ResultStore(str(tmp_path))
    job = Job("t1", "a.wav")
    done = Completion("t1", "done", "Hola mundo.", "es", 1.5, 0.1, store.write("t1", RESULT, job.formats), None, "w")
    store.commit(job, done, AUDIO)
    with pytest.raises(JobError) as e:
        store.lookup(other, lambda: size)
    assert e.value.code == "task_id_conflict"
    assert store.lookup(job, lambda: AUDIO) == done


def test_a_marker_from_before_a_job_field_existed_still_answers_its_job(tmp_path):
    """A marker written by a version whose Job had no diarize/speakers fields: a redelivery after the
    upgrade is the same job (its new fields at their defaults), not a task_id_conflict."""
    store = ResultStore(str(tmp_path))
    job = Job("t1", "a.wav")
    done = Completion("t1", "done", "Hola mundo.", "es", 1.5, 0.1, store.write("t1", RESULT, job.formats), None, "w")
    store.commit(job, done, AUDIO)
    marker = tmp_path / results.MARKER_DIR / "t1.completion.json"
    record = json.loads(marker.read_text())
    for name in ("diarize", "speakers", "min_speakers", "max_speakers"):
        del record["job"][name]
    marker.write_text(json.dumps(record))
    assert store.lookup(job, lambda: AUDIO) == done
    with pytest.raises(JobError) as e:
        store.lookup(Job("t1", "a.wav", diarize=True), lambda: AUDIO)
    assert e.value.code == "task_id_conflict"


def test_attempts_are_counted_until_ended(tmp_path):
    store = ResultStore(str(tmp_path))
    assert [store.begin_attempt("t"), store.begin_attempt("t")] == [1, 2]
    store.end_attempts("t")
    assert store.begin_attempt("t") == 1


def test_temp_files_of_dead_writers_on_this_host_are_swept(tmp_path):
    store = ResultStore(str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine_dead = tmp_path / f".t.json.{results.HOST}.{dead.pid}.tmp"
    mine_alive = tmp_path / f".u.json.{results.HOST}.{os.getpid()}.tmp"
    other_host = tmp_path / f".v.json.otherhost.{dead.pid}.tmp"
    marker_dead = tmp_path / results.MARKER_DIR / f".t.completion.json.{results.HOST}.{dead.pid}.tmp"
    for p in (mine_dead, mine_alive, other_host, marker_dead):
        p.write_text("half")
    assert store.sweep_stale_temp_files() == 2
    assert not mine_dead.exists() and not marker_dead.exists()
    assert mine_alive.exists() and other_host.exists()
