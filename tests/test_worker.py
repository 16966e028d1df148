"""End to end through a real worker: real broker, real whisper with the fixture model, real ffmpeg."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from conftest import BROKER_URL, wait_for

from devkit.clips import CLIPS, JFK, SPANISH


def test_jfk_is_transcribed_exactly(broker, daemon):
    daemon.stage(JFK.path, "jfk.flac")
    broker.publish({"task_id": "jfk-1", "audio_path": "jfk.flac"})
    [c] = broker.completions(1, 60)
    assert c["status"] == "done", c
    assert c["task_id"] == "jfk-1"
    assert c["text"] == JFK.reference
    assert c["language"] == "en"
    assert abs(c["duration_s"] - 11.0) < 0.1
    assert c["error"] is None
    assert set(c["results"]) == {"json", "txt"}
    txt = Path(c["results"]["txt"])
    assert txt == daemon.results / "jfk-1.txt"
    assert txt.read_text().strip() == JFK.reference
    segments = json.loads((daemon.results / "jfk-1.json").read_text())["segments"]
    assert segments and segments[0]["text"].strip() == JFK.reference
    assert c["worker"].split(":")[1] == "worker-1"


def test_spanish_clip_is_detected_as_spanish(broker, daemon):
    daemon.stage(SPANISH.path, "es.wav")
    broker.publish({"task_id": "es-1", "audio_path": "es.wav", "formats": ["srt", "vtt", "tsv"]})
    [c] = broker.completions(1, 60)
    assert c["status"] == "done", c
    assert c["language"] == "es"
    assert c["text"] == SPANISH.reference
    assert set(c["results"]) == {"srt", "vtt", "tsv"}
    assert "blanquecinas" in (daemon.results / "es-1.srt").read_text()
    assert (daemon.results / "es-1.vtt").read_text().startswith("WEBVTT")


def test_job_from_a_non_python_client_amqp_publish(broker, daemon):
    daemon.stage(JFK.path, "from-cli.flac")
    body = json.dumps({"task_id": "amqp-tools-1", "audio_path": "from-cli.flac"})
    subprocess.run(
        ["amqp-publish", "--url", BROKER_URL.replace("%2F", "%2f"), "-r", broker.job_queue, "-p",
         "-C", "application/json", "-b", body],
        check=True,
    )  # fmt: skip
    [c] = broker.completions(1, 60)
    assert (c["task_id"], c["status"], c["text"]) == ("amqp-tools-1", "done", JFK.reference)


def test_reply_to_and_correlation_id_are_honoured(broker, daemon):
    daemon.stage(JFK.path, "jfk.flac")
    reply = broker.ch.queue_declare("", exclusive=True).method.queue
    broker.publish({"task_id": "rpc-1", "audio_path": "jfk.flac"}, reply_to=reply, correlation_id="corr-42")
    props, body = broker.get(reply, 60)
    assert props.correlation_id == "corr-42"
    assert body["task_id"] == "rpc-1" and body["status"] == "done"
    [c] = broker.completions(1, 10)
    assert c["task_id"] == "rpc-1"


def test_path_with_spaces_in_a_subdirectory(broker, daemon):
    daemon.stage(JFK.path, "uploads/2026 11/my recording (1).flac")
    broker.publish({"task_id": "spaces", "audio_path": "uploads/2026 11/my recording (1).flac"})
    [c] = broker.completions(1, 60)
    assert c["status"] == "done" and c["text"] == JFK.reference


def test_bad_jobs_fail_clearly_and_the_worker_keeps_serving(broker, daemon):
    (daemon.media / "empty.wav").write_bytes(b"")
    (daemon.media / "text.wav").write_text("not audio at all")
    (daemon.media / "dir").mkdir()
    os.symlink("/etc/passwd", daemon.media / "escape.wav")
    daemon.stage(JFK.path, "jfk.flac")
    cases = {
        "missing": ("nope.wav", "file_not_found"),
        "outside": ("../../../etc/passwd", "path_outside_media_root"),
        "absolute": ("/etc/passwd", "path_outside_media_root"),
        "symlink": ("escape.wav", "path_outside_media_root"),
        "directory": ("dir", "not_a_file"),
        "empty": ("empty.wav", "empty_file"),
        "garbage": ("text.wav", "invalid_audio"),
    }
    for task_id, (path, _) in cases.items():
        broker.publish({"task_id": task_id, "audio_path": path})
    broker.publish({"task_id": "lang", "audio_path": "jfk.flac", "language": "klingon"})
    broker.publish({"task_id": "fmt", "audio_path": "jfk.flac", "formats": ["docx"]})
    broker.publish({"task_id": "bad id!", "audio_path": "jfk.flac"})
    broker.publish(b"this is not json")
    broker.publish({"task_id": "after", "audio_path": "jfk.flac"})
    got = {c["task_id"]: c for c in broker.completions(len(cases) + 3, 90)}
    for task_id, (_, code) in cases.items():
        assert got[task_id]["status"] == "failed"
        assert got[task_id]["error"]["code"] == code, got[task_id]
    assert got["lang"]["error"]["code"] == "unsupported_language"
    assert got["fmt"]["error"]["code"] == "unsupported_format"
    assert got["after"]["status"] == "done" and got["after"]["text"] == JFK.reference
    assert "root:" not in json.dumps(got)
    log = daemon.log()
    assert "failed: path_outside_media_root" in log and "job without a valid task_id" in log
    # Jobs without a usable task id cannot be answered: they are parked in the dead-letter queue.
    wait_for(lambda: broker.depth(f"{broker.job_queue}.dead")[0] == 2, 10, "2 dead-lettered jobs")
    assert len(daemon.workers()) == 1


def test_no_ack_before_the_completion_is_confirmed(broker, daemon_factory):
    """While the result queue refuses publishes, the job stays unacked; kill -9, restart: done once."""
    policy = f"block-{broker.result_queue}"
    # A quorum queue, as whisperd declares it. Quorum queues refuse publishes once they are over
    # max-length, not at it: one message already in the queue makes max-length 0 refuse the next.
    broker.ch.queue_declare(broker.result_queue, durable=True, arguments={"x-queue-type": "quorum"})
    broker.publish({"filler": True}, queue=broker.result_queue)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_policy", "--apply-to", "queues", policy, f"^{broker.result_queue}$",
         '{"max-length": 0, "overflow": "reject-publish"}'],
        check=True,
    )  # fmt: skip
    try:
        d = daemon_factory().start()
        d.stage(JFK.path, "jfk.flac")
        broker.publish({"task_id": "confirm-1", "audio_path": "jfk.flac"})
        wait_for(lambda: (d.results / "confirm-1.txt").exists(), 60, "the result file")
        wait_for(lambda: "confirm-1" in d.log() and "unreachable" in d.log(), 30, "the refused completion")
        os.killpg(d.pid, signal.SIGKILL)
        d.proc.wait(10)
        wait_for(lambda: broker.depth(broker.job_queue) == (1, 0), 30, "the job back in the queue")
    finally:
        subprocess.run(["rabbitmqctl", "-q", "clear_policy", policy], check=True)
    assert broker.get(broker.result_queue, 1)[1] == {"filler": True}
    assert broker.get(broker.result_queue, 1) is None
    d2 = daemon_factory("d2", storage={"results_dir": str(d.results), "media_root": str(d.media)}).start()
    [c] = broker.completions(1, 60)
    assert (c["task_id"], c["status"], c["text"]) == ("confirm-1", "done", JFK.reference)
    assert "already done, answering from the stored result" in d2.log()
    assert broker.get(broker.result_queue, 3) is None
    wait_for(lambda: broker.depth(broker.job_queue) == (0, 0), 20, "the job acked (queue stats lag a few seconds)")


def test_limits_truncation_and_malformed_jobs_fail_with_their_codes(broker, daemon_factory):
    d = daemon_factory(limits={"max_file_mb": 0.5, "max_duration_s": 6.0}).start()
    short, long_clip = CLIPS[1], SPANISH  # 3.3 s and 8.7 s, both under 0.5 MiB
    d.stage(JFK.path, "big.flac")  # 1.1 MiB
    d.stage(long_clip.path, "long.wav")
    d.stage(short.path, "short.wav")
    (d.media / "cut.wav").write_bytes(long_clip.path.read_bytes()[:60000])
    cases = {
        "too-big": ({"audio_path": "big.flac"}, "file_too_large"),
        "too-long": ({"audio_path": "long.wav"}, "audio_too_long"),
        "truncated": ({"audio_path": "cut.wav"}, "invalid_audio"),
        "no-path": ({}, "invalid_audio_path"),
        "number-path": ({"audio_path": 42}, "invalid_audio_path"),
        "bad-task": ({"audio_path": "short.wav", "task": "summarize"}, "unsupported_task"),
    }
    for task_id, (fields, _) in cases.items():
        broker.publish({"task_id": task_id, **fields})
    broker.publish(b'["a", "list"]')
    broker.publish({"audio_path": "short.wav"})
    broker.publish({"task_id": "after", "audio_path": "short.wav"})
    got = {c["task_id"]: c for c in broker.completions(len(cases) + 1, 90)}
    for task_id, (_, code) in cases.items():
        assert (got[task_id]["status"], (got[task_id]["error"] or {}).get("code")) == ("failed", code), got[task_id]
    assert "limit is 0 MiB" not in got["too-big"]["error"]["message"]
    assert "6 s" in got["too-long"]["error"]["message"]
    assert got["after"]["status"] == "done" and got["after"]["text"] == short.reference
    wait_for(lambda: broker.depth(broker.dead_queue)[0] == 2, 20, "the two unanswerable jobs dead-lettered")
    wait_for(lambda: broker.depth(broker.job_queue) == (0, 0), 20, "nothing requeued")
    assert d.log().count("job without a valid task_id") == 2
