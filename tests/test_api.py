"""``whisperd api`` as a real uvicorn process, driven over HTTP, with a real daemon behind it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from clips import JFK, SPANISH
from conftest import REPO, wait_for

from whisperd.api import TaskStore
from whisperd.contract import Completion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """``python -m whisperd api`` with the daemon's config file."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Api:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "whisperd", "api", "--config", str(self.config_path),
             "--listen", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )  # fmt: skip

        def healthy() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, 60, "the API to answer /healthz", interval=0.2)
        return self

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.log.close()
        return code

    def post(self, path: Path, name: str | None = None, **form: str) -> requests.Response:
        with open(path, "rb") as f:
            return requests.post(f"{self.url}/transcriptions", files={"file": (name or path.name, f)}, data=form,
                                 timeout=30)  # fmt: skip

    def get(self, task_id: str) -> requests.Response:
        return requests.get(f"{self.url}/transcriptions/{task_id}", timeout=10)

    def wait_final(self, task_id: str, timeout: float = 90) -> dict:
        def final() -> dict | None:
            body = self.get(task_id).json()
            return body if body["state"] in ("done", "failed") else None

        return wait_for(final, timeout, f"task {task_id} to finish", interval=0.3)


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
    assert (d.media / "uploads" / f"{task_id}.flac").read_bytes() == JFK.path.read_bytes()

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
    wait_for(
        lambda: broker.ch.queue_declare(broker.result_queue, passive=True).method.message_count == 0,
        10,
        "the completions acked",
    )


def test_bad_requests(setup):
    _, api = setup
    api.start()
    assert api.get("nope").status_code == 404
    assert api.get("../../etc/passwd").status_code == 404
    assert requests.get(f"{api.url}/transcriptions/nope/result.txt", timeout=10).status_code == 404
    assert api.post(JFK.path, formats="json,docx").status_code == 422
    assert requests.post(f"{api.url}/transcriptions", timeout=10).status_code == 422  # no file
    empty = Path(os.devnull)
    assert api.post(empty, "empty.wav").status_code == 422
    openapi = requests.get(f"{api.url}/openapi.json", timeout=10).json()
    assert {"/transcriptions", "/transcriptions/{task_id}"} <= set(openapi["paths"])


def test_a_late_processing_event_never_undoes_a_result(tmp_path):
    store = TaskStore(str(tmp_path))
    store.create("t1", "a.wav", "uploads/t1.wav")
    store.apply(Completion("t1", "done", text="hola"))
    store.apply(Completion("t1", "processing"))  # redelivered or reordered: ignored
    record = store.get("t1")
    assert record["state"] == "done" and record["completion"]["text"] == "hola"
    assert [h["state"] for h in record["history"]] == ["queued", "done"]
    assert sorted(os.listdir(tmp_path)) == ["t1.json"], "no temp files left behind"
