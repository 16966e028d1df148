"""Hostile requests and result-queue messages against a real ``whisperd api`` and the real broker.

No daemon runs here (no job needs to): a job the API accepts stays in the job queue, where the
tests count it, so "refused" also means "nothing published". Every refusal must come with its
own ``code``, leave nothing on disk, and leave the API serving.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import requests
from api_process import Api, RawHttp
from conftest import wait_for
from multipart_body import BOUNDARY, MULTIPART, form, part

from devkit.clips import JFK
from whisperd.wire import MAX_COMPLETION_BYTES

CAP_MB = 2.0  # limits.max_file_mb in these tests; jfk.flac is 1.1 MB
CAP = int(CAP_MB * 2**20)
TOKEN = "t0ken-for-tests-0123456789abcdef"


AUDIO = part("file", JFK.path.read_bytes(), "jfk.flac")


class HostileApi(Api):
    """An API on the test's queues (no daemon behind it) and the directories to watch."""

    def __init__(self, root: Path, broker, daemon_factory, nofile: int | None = None,
                 constants: dict[str, object] | None = None, **api: object) -> None:  # fmt: skip
        d = daemon_factory(root.name, on=broker, limits={"max_file_mb": CAP_MB},
                           api={"state_dir": str(root / "state"), **api})  # fmt: skip
        self.broker = broker
        self.uploads = d.media / "uploads"
        self.results = Path(d.config["storage"]["results_dir"])
        self.results.mkdir(parents=True, exist_ok=True)
        self.state = root / "state"
        self.tmpdir = root / "tmp"  # where starlette would spool multipart parts
        self.tmpdir.mkdir()
        super().__init__(d.config_path, root / "api.log", env={"TMPDIR": str(self.tmpdir)}, nofile=nofile,
                         constants=constants)  # fmt: skip

    def task(self) -> str:
        """A task of this API (a tiny upload; no daemon: its job stays queued)."""
        r = self.send(form(part("file", b"RIFF", "a.wav")))
        assert r.status_code == 202, r.text
        return r.json()["task_id"]

    def complete(self, task_id: str, **fields: object) -> None:
        """Publish a completion for ``task_id`` on the result queue, as a worker (or a forger) would."""
        self.broker.publish({"task_id": task_id, "status": "done", **fields}, queue=self.broker.result_queue)

    def state_of(self, task_id: str) -> str:
        return self.get(task_id).json()["state"]

    def parked(self) -> list[tuple[pika.BasicProperties, bytes]]:
        """The messages the listener parked in ``<result queue>.dead``, taken off that queue."""
        got = []
        while True:
            method, props, body = self.broker.ch.basic_get(f"{self.broker.result_queue}.dead", auto_ack=True)
            if method is None:
                return got
            got.append((props, body))

    def log_count(self, text: str) -> int:
        return self.log_path.read_text(errors="replace").count(text)

    def send(self, body: bytes, content_type: str = MULTIPART, **headers: str) -> requests.Response:
        headers = {"Content-Type": content_type, **self.headers, **headers}
        return requests.post(f"{self.url}/transcriptions", data=body, headers=headers, timeout=60)

    def uploads_under_way(self) -> int:
        """Uploads holding a slot: each has its partial file from the moment it takes one."""
        return len(list(self.uploads.glob(".*.upload")))

    def jobs(self) -> int:
        return self.broker.ch.queue_declare(self.broker.job_queue, passive=True).method.message_count

    def disk_bytes(self) -> int:
        """Bytes in the upload directory and the API's TMPDIR: what a request has put on disk."""
        total = 0
        for d in (self.uploads, self.tmpdir):
            for entry in os.scandir(d) if d.exists() else ():
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    pass
        return total

    def assert_nothing_kept(self, jobs: int = 0) -> None:
        assert self.jobs() == jobs, "nothing published"
        wait_for(lambda: self.disk_bytes() == 0, 10, "no upload or temp file left")
        assert not list(self.state.iterdir()), "no task recorded"


def api_maker(broker, daemon_factory, tmp_path) -> Iterator:
    """``make(**api keys)``: a started HostileApi on ``broker``; each stopped, its parked queue deleted, after."""
    made: list[HostileApi] = []

    def make(wait_healthy: bool = True, start: bool = True, **api: object) -> HostileApi:
        a = HostileApi(tmp_path / f"api{len(made)}", broker, daemon_factory, **api)
        made.append(a)
        return a.start(wait_healthy) if start else a

    yield make
    for a in made:
        if a.proc is not None and a.proc.poll() is None:
            a.stop()
    try:
        if not broker.conn.is_open:  # a test stopped its broker
            broker.connect()
        broker.ch.queue_delete(f"{broker.result_queue}.dead")
    except pika.exceptions.AMQPError:
        pass


@pytest.fixture
def make_api(broker, daemon_factory, tmp_path):
    yield from api_maker(broker, daemon_factory, tmp_path)


def refused(r: requests.Response, status: int, code: str) -> None:
    assert (r.status_code, r.json()["code"]) == (status, code), r.text


def test_a_form_upload_is_stored_byte_for_byte_and_queued(make_api):
    api = make_api()
    r = api.post(JFK.path, "../../../etc/passwd.FLAC", language="en", formats="json,srt", word_timestamps="true")
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    assert (api.uploads / f"{task_id}.flac").read_bytes() == JFK.path.read_bytes()
    assert sorted(os.listdir(api.uploads)) == [f"{task_id}.flac"], "inside the upload directory, named by task id"
    _, _, body = api.broker.ch.basic_get(api.broker.job_queue, auto_ack=True)
    assert json.loads(body) == {"task_id": task_id, "audio_path": f"uploads/{task_id}.flac", "language": "en",
                                "formats": ["json", "srt"], "word_timestamps": True}  # fmt: skip
    shown = api.get(task_id).json()
    assert (shown["status"], shown["filename"]) == ("En proceso", "../../../etc/passwd.FLAC")

    long_name = "n" * 300 + ".wav"
    r = api.send(form(part("file", b"RIFF", long_name)))
    assert api.get(r.json()["task_id"]).json()["filename"] == long_name[:255], "the stored name is bounded"
    r = api.send(form(part("file", b"RIFF", "a\x00b\x7f.exe.sh")))
    assert os.path.exists(api.uploads / f"{r.json()['task_id']}.sh")


def test_an_oversized_content_length_is_refused_before_any_byte_is_read(make_api):
    api = make_api()
    conn = RawHttp(api.port)
    conn.post_head(MULTIPART, 10 * 2**30)  # the head alone: a server that waits for the body fails here
    status, headers, body = conn.response(timeout=15)
    assert (status, json.loads(body)["code"]) == (413, "file_too_large")
    assert headers["connection"] == "close"
    conn.close()
    api.assert_nothing_kept()


def test_a_chunked_body_is_cut_off_once_it_passes_the_cap(make_api):
    api = make_api()
    conn = RawHttp(api.port)
    conn.post_head(MULTIPART)
    largest, done = [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.005):
            largest[0] = max(largest[0], api.disk_bytes())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'.encode()
    chunk = os.urandom(64 * 1024)
    try:
        for data in [head] + [chunk] * (CAP // len(chunk) + 8):  # 512 kB past the cap, and never the last chunk
            if not conn.send(b"%x\r\n%s\r\n" % (len(data), data)):
                break  # the server closed the connection at the cap
        status, _, body = conn.response(timeout=15)  # a server waiting for the end of the body fails here
    finally:
        done.set()
        watcher.join()
    assert (status, json.loads(body)["code"]) == (413, "file_too_large")
    assert largest[0] <= CAP, f"{largest[0]} bytes reached the disk, over the {CAP} cap"
    # The 413 came although the body never ended (no last chunk): the server stopped at the cap.
    conn.close()
    api.assert_nothing_kept()


def test_a_file_just_over_the_cap_inside_a_small_form(make_api):
    api = make_api()
    refused(api.send(form(part("file", b"\0" * (CAP + 1000), "a.wav"))), 413, "file_too_large")
    api.assert_nothing_kept()


MALFORMED_FORMS = {
    # the review's case: a valid file, then junk parts (were spooled to disk, then 202)
    "junk-file-parts": (form(AUDIO, part("junk", b"j" * 300_000, "junk1.bin"), part("junk2", b"j" * 300_000, "j2")),
                        400, "unexpected_field"),
    "second-file": (form(AUDIO, part("file", b"j" * 300_000, "second.wav")), 400, "too_many_files"),
    "unknown-field": (form(AUDIO, part("callback_url", b"http://evil.example")), 400, "unexpected_field"),
    "duplicate-field": (form(AUDIO, part("language", b"es"), part("language", b"en")), 400, "duplicate_field"),
    "long-field": (form(AUDIO, part("language", b"es" * 600)), 400, "field_too_large"),
    "field-as-file": (form(AUDIO, part("language", b"es", "lang.txt")), 400, "too_many_files"),
    "too-many-parts": (form(AUDIO, part("language", b"es"), part("formats", b"txt"), part("word_timestamps", b"1"),
                            part("diarize", b"true"), part("speakers", b"2"), part("min_speakers", b""),
                            part("max_speakers", b""), part("extra", b"1")), 400, "too_many_parts"),
    "no-disposition": (form(AUDIO, part("", b"x", headers=b"Content-Type: text/plain\r\n")), 400, "malformed_body"),
    "not-form-data": (form(AUDIO, part("", b"x", headers=b'Content-Disposition: attachment; filename="x"\r\n')),
                      400, "malformed_body"),
    "long-part-header": (form(AUDIO, part("", b"x", headers=b'Content-Disposition: form-data; name="' + b"n" * 5000
                                          + b'"\r\n')), 400, "malformed_body"),
    "many-part-headers": (form(part("", b"x", headers=b"X-A: 1\r\n" * 50), AUDIO), 400, "malformed_body"),
    "field-not-utf8": (form(AUDIO, part("language", b"\xff\xfe")), 400, "malformed_body"),
    "no-closing-boundary": (AUDIO, 400, "incomplete_body"),
    "garbage-body": (b"this is not a multipart body at all", 400, "malformed_body"),
    "no-file": (form(part("language", b"es")), 422, "missing_file"),
    "empty-file": (form(part("file", b"", "empty.wav")), 422, "empty_file"),
    "bad-formats": (form(AUDIO, part("formats", b"json,docx")), 422, "unsupported_format"),
    "bad-bool": (form(AUDIO, part("word_timestamps", b"maybe")), 422, "invalid_option"),
}  # fmt: skip


def test_malformed_forms_are_refused_with_a_code(make_api):
    api = make_api()
    for kind, (body, status, code) in MALFORMED_FORMS.items():
        r = api.send(body)
        assert (r.status_code, r.json().get("code")) == (status, code), f"{kind}: {r.text}"
        api.assert_nothing_kept()
    assert api.post(JFK.path).status_code == 202, "still serving"


def test_bodies_that_are_not_a_form(make_api):
    api = make_api()
    refused(api.send(b'{"audio_path": "/etc/passwd"}', "application/json"), 415, "unsupported_media_type")
    refused(api.send(form(AUDIO), "multipart/form-data"), 400, "malformed_body")  # no boundary
    refused(api.send(form(AUDIO), "multipart/form-data; boundary=" + "b" * 300), 400, "malformed_body")
    refused(requests.post(f"{api.url}/transcriptions", timeout=10), 415, "unsupported_media_type")
    conn = RawHttp(api.port)  # a Content-Length shorter than the body: the form ends early
    conn.post_head(MULTIPART, 500_000)
    conn.send(form(AUDIO))
    status, headers, body = conn.response()
    assert (status, json.loads(body)["code"], headers["connection"]) == (400, "incomplete_body", "close")
    conn.close()
    api.assert_nothing_kept()


def half_an_upload(api: HostileApi) -> RawHttp:
    """An upload that sends its head and 100 kB of its body, then nothing more; returned once it holds a slot.

    Without the wait a request sent right after it could reach the handler first and take the slot.
    """
    held = api.uploads_under_way()
    conn = RawHttp(api.port)
    body = form(AUDIO)
    conn.post_head(MULTIPART, len(body))
    conn.send(body[:100_000])
    wait_for(lambda: api.uploads_under_way() > held, 30, "the half upload under way")
    return conn


def test_a_stalled_upload_times_out_and_leaves_nothing(make_api):
    api = make_api(upload_idle_timeout_s=2.0)
    conn = half_an_upload(api)
    status, _, answer = conn.response(timeout=30)  # then nothing: a slow-loris client
    assert (status, json.loads(answer)["code"]) == (408, "upload_timeout")
    conn.close()
    api.assert_nothing_kept()


def test_concurrent_uploads_are_bounded_and_a_vanished_client_leaves_nothing(make_api):
    api = make_api(max_concurrent_uploads=1)
    conn = half_an_upload(api)

    def answer() -> requests.Response:  # an otherwise-invalid form: 422 when a slot is free, never published
        return api.send(form(AUDIO, part("formats", b"docx")))

    busy = wait_for(lambda: (r := answer()).status_code == 503 and [r], 30, "the second upload refused")[0]
    refused(busy, 503, "too_many_uploads")
    assert busy.headers["retry-after"]
    conn.close()  # the first client goes away mid-upload
    wait_for(lambda: answer().status_code == 422, 30, "the slot freed")
    api.assert_nothing_kept()


CROSS_ORIGIN = {
    "other-site": {"Origin": "https://evil.example"},
    "null-origin": {"Origin": "null"},
    "lookalike": {"Origin": "https://intranet.example.evil.example"},
    "sec-fetch-cross-site": {"Sec-Fetch-Site": "cross-site"},
    "sec-fetch-same-site": {"Sec-Fetch-Site": "same-site"},
    "contradicting-headers": {"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "cross-site"},
}


def test_cross_origin_posts_are_refused(make_api):
    api = make_api(allowed_origins=["https://intranet.example"])
    for kind, headers in CROSS_ORIGIN.items():
        r = api.post(JFK.path, headers={k: v.format(port=api.port) for k, v in headers.items()})
        assert (r.status_code, r.json()["code"]) == (403, "cross_origin"), kind
    api.assert_nothing_kept()
    assert api.post(JFK.path, headers={"Origin": "https://intranet.example"}).status_code == 202, "allowed origin"
    assert api.post(JFK.path, headers={"Origin": f"http://127.0.0.1:{api.port}"}).status_code == 202, "own /docs"
    assert api.post(JFK.path).status_code == 202, "a client that is not a browser"
    assert api.jobs() == 3


def test_a_bearer_token_guards_every_task_route(make_api, tmp_path):
    api = make_api(token=TOKEN)
    unauthorized = [
        api.post(JFK.path),
        api.post(JFK.path, headers={"Authorization": "Bearer " + TOKEN[:-1]}),
        api.post(JFK.path, headers={"Authorization": "Bearer " + TOKEN + "x"}),
        api.post(JFK.path, headers={"Authorization": "Basic " + TOKEN}),
        api.post(JFK.path, headers={"Authorization": "Bearer"}),
        api.get("some-task"),
        requests.get(f"{api.url}/transcriptions/some-task/result.txt", timeout=10),
    ]
    for r in unauthorized:
        refused(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
    api.assert_nothing_kept()
    conn = RawHttp(api.port)  # refused before the body is read
    conn.post_head(MULTIPART, 10 * 2**30)
    assert conn.response(timeout=15)[0] == 401
    conn.close()
    assert requests.get(f"{api.url}/healthz", timeout=10).status_code == 200, "health checks need no token"

    api.headers = {"Authorization": f"Bearer {TOKEN}"}
    r = api.post(JFK.path)
    assert r.status_code == 202 and api.get(r.json()["task_id"]).status_code == 200
    assert TOKEN not in api.log_path.read_text()

    token_file = tmp_path / "api.token"
    token_file.write_text("from-a-file-0123456789abcdef\n")
    token_file.chmod(0o600)
    from_file = make_api(token_file=str(token_file))
    refused(from_file.post(JFK.path), 401, "unauthorized")
    assert from_file.post(JFK.path, headers={"Authorization": "Bearer from-a-file-0123456789abcdef"}).status_code == 202


def test_a_bad_token_setting_stops_the_start_without_printing_it(make_api, tmp_path):
    open_to_all = tmp_path / "world-readable.token"
    open_to_all.write_text("readable-by-anyone-0123456789")
    open_to_all.chmod(0o644)
    for keys, says in [
        ({"token_file": str(open_to_all)}, "open to other users"),
        ({"token": "short-secret"}, "at least 16"),
        ({"token": "spaces in the secret 0123", "token_file": "/etc/hostname"}, "not both"),
        ({"token": "spaces in the secret 0123"}, "without spaces"),
        ({"token_file": "/nonexistent/api.token"}, "cannot read"),
    ]:
        api = make_api(start=False, **keys).launch()
        assert api.proc.wait(30) == 2, api.log_path.read_text()
        log = api.log_path.read_text()
        assert says in log, log
        assert "token" not in keys or keys["token"] not in log


def poison_messages() -> dict[str, bytes]:
    completion = {"task_id": "p", "status": "done"}
    return {
        "deep-json": b"[" * 100_000,
        "deep-object": b'{"a":' * 50_000,
        "huge-body": b'{"task_id": "p", "status": "done", "text": "' + b"a" * MAX_COMPLETION_BYTES + b'"}',
        "not-utf8": b"\xff\xfe\xfa\x00garbage",
        "empty": b"",
        "json-array": b"[]",
        "json-string": b'"done"',
        "json-null": b"null",
        "json-number": b"42",
        "huge-integer": b'{"task_id": "p", "status": "done", "duration_s": ' + b"9" * 5000 + b"}",
        "nan": b'{"task_id": "p", "status": "done", "duration_s": NaN}',
        "no-task-id": json.dumps({"status": "done"}).encode(),
        "task-id-path": json.dumps({**completion, "task_id": "../../etc/passwd"}).encode(),
        "task-id-number": json.dumps({**completion, "task_id": 7}).encode(),
        "unknown-status": json.dumps({**completion, "status": "exploded"}).encode(),
        "results-not-object": json.dumps({**completion, "results": 5}).encode(),
        "results-unknown-format": json.dumps({**completion, "results": {"docx": "/etc/passwd"}}).encode(),
        "text-not-string": json.dumps({**completion, "text": {"a": [1]}}).encode(),
        "lone-surrogate": b'{"task_id": "p", "status": "done", "text": "\\ud800"}',
        "error-nested": json.dumps({**completion, "status": "failed", "error": {"code": {"x": 1}}}).encode(),
    }


def test_the_completion_listener_survives_any_message_and_healthz_tells_the_truth(make_api, broker):
    api = make_api()
    task_id = api.task()
    poison = poison_messages()
    for body in poison.values():
        broker.publish(body, queue=broker.result_queue)
    # unknown fields are ignored
    api.complete(task_id, text="hola", language="es", new_field={"from": "a newer whisperd"})
    done = api.wait_final(task_id, timeout=60)
    assert (done["status"], done["text"], done["language"]) == ("Completado", "hola", "es")
    assert api.get("p").status_code == 404, "no poison message was recorded"
    health = api.health()
    assert health == {"status": "ok", "completions": "reading", "rejected_messages": len(poison),
                      "ignored_messages": 0}, health  # fmt: skip
    wait_for(lambda: broker.depth(broker.result_queue) == (0, 0), 30, "every message settled, none requeued")
    parked = api.parked()
    assert sorted(body for _, body in parked) == sorted(poison.values()), "each parked as it came"
    assert all(p.headers["x-whisperd-reason"].startswith("not a completion") for p, _ in parked)
    assert "Traceback" not in api.log_path.read_text()


def test_healthz_is_503_while_completions_cannot_be_read(make_api, broker):
    # a queue another connection holds exclusively: the broker is up, but the listener cannot consume
    blocked = f"{broker.job_queue}.api-results"
    broker.ch.queue_declare(blocked, exclusive=True)
    try:
        api = make_api(wait_healthy=False, result_queue=blocked)

        def refused_again(times: int) -> bool:
            """503 now, once the listener has failed to consume ``times`` times."""
            r = api.answers()
            assert r is not None and r.status_code == 503 and r.json()["completions"] == "reconnecting", r
            return api.log_path.read_text().count(f"result queue {blocked}: ") >= times

        for times in (1, 2, 3):  # 503 through three failed tries, not only at the first
            wait_for(functools.partial(refused_again, times), 60, f"the listener's try {times} on the held queue")
    finally:
        broker.ch.queue_delete(blocked)
    assert wait_for(api.health, 30, "healthy once the queue can be read")["completions"] == "reading"
    broker.ch.queue_delete(blocked)


def test_task_urls_are_validated_and_errors_carry_a_code(make_api):
    api = make_api()
    for path, status, code in [
        ("/transcriptions/nope", 404, "task_not_found"),
        ("/transcriptions/" + "x" * 200, 400, "invalid_task_id"),
        ("/transcriptions/bad%20id", 400, "invalid_task_id"),
        ("/transcriptions/nope/result.txt", 404, "task_not_found"),
        ("/transcriptions/%2E%2E%2Fetc%2Fpasswd", 404, "not_found"),  # decoded before routing: no such route
        ("/transcriptions/..%5Cetc", 400, "invalid_task_id"),
        ("/etc/passwd", 404, "not_found"),
    ]:
        refused(requests.get(api.url + path, timeout=10), status, code)
    refused(requests.delete(f"{api.url}/transcriptions", timeout=10), 405, "method_not_allowed")
    task_id = api.post(JFK.path).json()["task_id"]
    refused(requests.get(f"{api.url}/transcriptions/{task_id}/result.docx", timeout=10), 404, "result_not_found")
    refused(requests.get(f"{api.url}/transcriptions/{task_id}/result.txt", timeout=10), 404, "result_not_found")
    openapi = requests.get(f"{api.url}/openapi.json", timeout=10).json()
    assert "multipart/form-data" in openapi["paths"]["/transcriptions"]["post"]["requestBody"]["content"]


class HealthSamples:
    """/healthz every 0.2 s in a thread while the ``with`` block runs: the status codes (None: no answer)."""

    def __init__(self, api: HostileApi) -> None:
        self.api = api
        self.codes: list[int | None] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthSamples:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(0.2):
            try:
                self.codes.append(requests.get(f"{self.api.url}/healthz", timeout=5).status_code)
            except requests.RequestException:
                self.codes.append(None)


def nested_table(depth: int) -> dict:
    """AMQP headers with tables nested ``depth`` deep."""
    headers: dict = {"leaf": 1}
    for _ in range(depth - 1):
        headers = {"n": headers}
    return headers


def nested_array(depth: int) -> dict:
    value: list = [1]
    for _ in range(depth - 1):
        value = [value]
    return {"n": value}


# Headers whisperd's AMQP guard cannot decode (deeper than 32 levels, more than 4096 values). The
# broker refuses a table that is malformed outright (541, closing the publisher's connection), so
# no such message reaches a consumer.
BAD_HEADERS = {
    "table-800-deep": nested_table(800),
    "array-800-deep": nested_array(800),
    "table-40-deep": nested_table(40),
    "4097-values": {"v": list(range(4097))},
}
BAD_BODIES = {
    "not-json": b"this is not json \xff",
    "json-100000-deep": b'{"a":' * 100_000,
    "body-20-mb": b'{"task_id": "x", "status": "done", "text": "' + b"a" * (20 << 20) + b'"}',
}


def publish_deep(api: HostileApi, headers: dict, body: dict, message_id: str) -> None:
    """Publish with headers pika can only encode with a higher recursion limit (it encodes recursively)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        api.broker.publish(body, queue=api.broker.result_queue, headers=headers, message_id=message_id)
    finally:
        sys.setrecursionlimit(limit)


def test_no_message_makes_the_completion_listener_reconnect_or_stall(make_api, broker):
    api = make_api()
    kinds = [*BAD_HEADERS, *BAD_BODIES, "unreadable-record"]
    tasks = {kind: (api.task(), api.task()) for kind in kinds}  # (the bad message's task, the one behind it)
    unreadable = tasks["unreadable-record"][0]
    (api.state / f"{unreadable}.json").write_text("{not json")  # its handling raises (ValueError)
    with HealthSamples(api) as health:
        started = time.monotonic()
        for kind, (bad, good) in tasks.items():
            completion = {"task_id": bad, "status": "done", "text": "must not be recorded"}
            if kind in BAD_HEADERS:  # a valid completion, but headers nobody can read
                publish_deep(api, BAD_HEADERS[kind], completion, kind)
            elif kind in BAD_BODIES:
                broker.publish(BAD_BODIES[kind], queue=broker.result_queue, message_id=kind)
            else:
                broker.publish(completion, queue=broker.result_queue, message_id=kind)
            api.complete(good, text=f"behind {kind}")
        for kind, (_, good) in tasks.items():
            assert api.wait_final(good, timeout=60)["text"] == f"behind {kind}"
        took = time.monotonic() - started
    print(f"{len(kinds)} bad messages and the completions behind them settled in {took:.1f} s")
    assert took < 30, f"the completions behind the bad messages took {took:.0f} s"
    for kind in BAD_HEADERS:
        assert api.state_of(tasks[kind][0]) == "queued", f"{kind}: a message with unreadable headers is not recorded"
    reasons = {p.message_id: p.headers["x-whisperd-reason"] for p, _ in api.parked()}
    assert sorted(reasons) == sorted(kinds), reasons
    for kind in BAD_HEADERS:
        assert reasons[kind].startswith("its AMQP headers cannot be decoded"), reasons[kind]
    for kind in BAD_BODIES:
        assert reasons[kind].startswith("not a completion"), reasons[kind]
    assert reasons["unreadable-record"].startswith("handling it failed"), reasons["unreadable-record"]
    assert health.codes and set(health.codes) == {200}, health.codes
    assert api.health()["rejected_messages"] == len(kinds)
    assert api.log_count("reading completions from") == 1 and api.log_count("reconnecting") == 0, "no reconnect"
    wait_for(lambda: broker.depth(broker.result_queue) == (0, 0), 30, "every message settled")


def test_a_completion_that_cannot_be_stored_is_parked_after_the_delivery_limit(make_api, broker):
    api = make_api()
    stuck, good = api.task(), api.task()
    (api.state / f"{stuck}.json").unlink()
    (api.state / f"{stuck}.json").mkdir()  # the store fails for this task only (EISDIR)
    broker.publish({"task_id": stuck, "status": "done"}, queue=broker.result_queue, message_id="stuck")
    api.complete(good, text="behind it")
    assert api.wait_final(good, timeout=20)["text"] == "behind it", "not held back by the one that fails"
    parked = wait_for(api.parked, 90, "the failing completion parked", interval=1)
    assert [p.message_id for p, _ in parked] == ["stuck"]
    assert parked[0][0].headers["x-whisperd-reason"].startswith("delivered 6 times"), parked[0][0].headers
    assert wait_for(api.health, 30, "healthy again")["completions"] == "reading"
    assert api.log_count("reading completions from") == 1, "returned to the queue, not reconnected"
    wait_for(lambda: broker.depth(broker.result_queue) == (0, 0), 30, "every message settled")


def test_only_the_apis_own_tasks_are_recorded_and_a_finished_task_stays_finished(make_api, broker):
    api = make_api()
    done, failed = api.task(), api.task()
    (api.results / f"{done}.txt").write_text("the first transcript")
    api.complete(done, text="first", results={"txt": str(api.results / f"{done}.txt")})
    broker.publish({"task_id": failed, "status": "failed", "error": {"code": "invalid_audio", "message": "x"}},
                   queue=broker.result_queue)  # fmt: skip
    api.wait_final(done)
    api.wait_final(failed)
    later = [
        # what a direct job reusing a finished task's id gets back from the worker
        {"task_id": done, "status": "failed", "error": {"code": "task_id_conflict", "message": "reused"}},
        {"task_id": done, "status": "done", "text": "second", "results": {}},
        {"task_id": done, "status": "processing", "progress": 0.5},
        {"task_id": failed, "status": "done", "text": "forged", "results": {"txt": str(api.results / f"{done}.txt")}},
        # tasks the API never created: another producer's, or forged
        {"task_id": "invoice-42", "status": "done", "text": "forged"},
        {"task_id": "f" * 32, "status": "failed", "error": {"code": "invalid_audio"}},
        {"task_id": "invoice-43", "status": "processing"},
    ]
    for completion in later:
        broker.publish(completion, queue=broker.result_queue)
    wait_for(lambda: broker.depth(broker.result_queue) == (0, 0), 30, "every completion settled")
    shown = api.get(done).json()
    assert (shown["state"], shown["text"], shown["error"]) == ("done", "first", None), shown
    assert requests.get(f"{api.url}/transcriptions/{done}/result.txt", timeout=10).text == "the first transcript"
    shown = api.get(failed).json()
    assert (shown["state"], shown["text"], shown["results"]) == ("failed", None, {}), shown
    for foreign in ("invoice-42", "f" * 32, "invoice-43"):
        refused(api.get(foreign), 404, "task_not_found")
    assert api.log_count(f"ignoring a failed completion (task_id_conflict) of task {done}: it is done already") == 1
    assert api.log_count("ignoring a done completion of task invoice-42: not a task of this API") == 1
    assert api.health()["ignored_messages"] == 5  # two late finals, three foreign
    assert not api.parked()


FORGED_RESULTS = ["another-tasks-file", "outside-results-dir", "own-name-outside", "symlink-to-another-task",
                  "symlink-out", "hard-link-to-another-task", "fifo", "directory", "missing"]  # fmt: skip


def forged_result(kind: str, task_id: str, results: Path, other: Path, outside: Path) -> Path:
    """Set up the files of one forged-result case; returns the path its completion names."""
    own = results / f"{task_id}.txt"
    if kind == "another-tasks-file":
        return other
    if kind == "outside-results-dir":
        return Path("/etc/passwd")
    if kind == "own-name-outside":  # the task's own name, one directory up
        (results.parent / own.name).write_text("x")
        return results / ".." / own.name
    if kind == "symlink-to-another-task":
        own.symlink_to(other)
    elif kind == "symlink-out":
        own.symlink_to(outside)
    elif kind == "hard-link-to-another-task":
        own.hardlink_to(other)
    elif kind == "fifo":  # opening it to read would block the request's thread forever
        os.mkfifo(own)
    elif kind == "directory":
        own.mkdir()
    return own


def test_result_files_are_served_only_when_they_are_the_tasks_own(make_api, tmp_path):
    api = make_api()
    other = api.results / f"{api.task()}.txt"
    other.write_text("another task's transcript")
    outside = tmp_path / "outside.txt"
    outside.write_text("not a result")
    for kind in FORGED_RESULTS:
        task_id = api.task()
        api.complete(task_id, results={"txt": str(forged_result(kind, task_id, api.results, other, outside))})
        api.wait_final(task_id)
        r = requests.get(f"{api.url}/transcriptions/{task_id}/result.txt", timeout=10)
        assert (r.status_code, r.json()["code"]) == (404, "result_not_found"), f"{kind}: {r.status_code} {r.text[:80]}"
    mine = api.task()
    (api.results / f"{mine}.txt").write_text("its own transcript")
    api.complete(mine, results={"txt": str(api.results / "." / f"{mine}.txt")})
    api.wait_final(mine)
    r = requests.get(f"{api.url}/transcriptions/{mine}/result.txt", timeout=10)
    assert (r.status_code, r.text) == (200, "its own transcript")
    assert r.headers["content-disposition"] == f'attachment; filename="{mine}.txt"'


REFUSED_HOSTS = {
    "rebound-name": "rebound.example:{port}",
    "rebound-name-no-port": "rebound.example",
    "loopback-ip-prefix": "127.0.0.1.rebound.example:{port}",
    "localhost-prefix": "localhost.rebound.example",
    "other-port-ip": "127.0.0.1:{other}",
    "other-port-name": "localhost:{other}",
    "other-port-ipv6": "[::1]:{other}",
    "empty": "",
    "unclosed-ipv6": "[::1",
    "userinfo": "127.0.0.1:{port}@rebound.example",
    "two-hosts": "127.0.0.1:{port}, rebound.example",
}
ACCEPTED_HOSTS = ["127.0.0.1:{port}", "localhost:{port}", "LocalHost:{port}", "[::1]:{port}", "127.0.0.1", "localhost"]


def host_routes(api: HostileApi, task_id: str) -> dict[str, tuple[str, str]]:
    """Every kind of route: method and path (POST sends a valid upload)."""
    return {
        "healthz": ("GET", "/healthz"),
        "task": ("GET", f"/transcriptions/{task_id}"),
        "result": ("GET", f"/transcriptions/{task_id}/result.txt"),
        "docs": ("GET", "/docs"),
        "openapi": ("GET", "/openapi.json"),
        "unknown": ("GET", "/nope"),
        "upload": ("POST", "/transcriptions"),
    }


def with_host(api: HostileApi, method: str, path: str, host: str) -> requests.Response:
    files = {"file": ("a.wav", b"RIFF")} if method == "POST" else None
    return requests.request(method, api.url + path, headers={"Host": host}, files=files, timeout=10)


def test_requests_naming_another_host_are_refused_on_every_route(make_api):
    api = make_api()
    task_id = api.task()
    other = api.port + 1
    jobs = api.jobs()
    for kind, host in REFUSED_HOSTS.items():
        for route, (method, path) in host_routes(api, task_id).items():
            r = with_host(api, method, path, host.format(port=api.port, other=other))
            assert (r.status_code, r.json()["code"]) == (400, "invalid_host"), f"{kind} {route}: {r.text[:80]}"
    rebinding = {"Origin": f"http://rebound.example:{api.port}", "Host": f"rebound.example:{api.port}"}
    refused(api.post(JFK.path, headers=rebinding), 400, "invalid_host")
    conn = RawHttp(api.port)  # HTTP/1.0 without any Host
    conn.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    status, _, body = conn.response()
    assert (status, json.loads(body)["code"]) == (400, "invalid_host")
    conn.close()
    assert api.jobs() == jobs, "no upload was queued"
    for host in ACCEPTED_HOSTS:
        for route, (method, path) in host_routes(api, task_id).items():
            r = with_host(api, method, path, host.format(port=api.port))
            assert r.status_code != 400, f"{host} {route}: {r.text[:80]}"


def test_configured_host_names_are_accepted(make_api):
    api = make_api(constants={"ALLOWED_HOSTS": ["api.intranet.example", "*.apps.example"]})
    for host in ("api.intranet.example", "api.intranet.example:8443", "whisper.apps.example", "127.0.0.1:{port}"):
        assert with_host(api, "GET", "/healthz", host.format(port=api.port)).status_code == 200, host
    for host in ("intranet.example", "api.intranet.example.rebound.example", "apps.example.rebound.example"):
        refused(with_host(api, "GET", "/healthz", host), 400, "invalid_host")
