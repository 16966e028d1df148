"""The API's routes in-process (Starlette's TestClient), with no broker: each route's answers and codes.

The publisher and the completion listener, the API's only broker-facing parts, are replaced by
fakes at ``create_app``'s boundary; a test plays the listener by applying completions to a
TaskStore on the same state directory. The real API under uvicorn, against the real broker, is
tested in test_api.py, test_api_hostile.py and test_api_flood.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika.exceptions
import pytest
from fastapi.testclient import TestClient
from multipart_body import BOUNDARY, MULTIPART, form, part

from whisperd.api import TaskStore, Tuning, create_app
from whisperd.api.errors import ApiError
from whisperd.api.receive import UploadSlots
from whisperd.config import Config
from whisperd.contract import Completion

TOKEN = "t0ken-for-tests-0123456789abcdef"
MAX_FILE_MB = 0.01  # 10485 bytes


class FakePublisher:
    """Takes the jobs a broker would; ``full`` and ``fail`` stand for a broker that is slow or gone."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []
        self.full = False
        self.fail: Exception | None = None
        self.closed = False

    async def publish(self, body: bytes, task_id: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.jobs.append(json.loads(body))

    def close(self) -> None:
        self.closed = True


class FakeListener:
    """Reports health as told; the test records completions itself."""

    def __init__(self) -> None:
        self.healthy = True
        self.running = False

    def health(self) -> dict[str, Any]:
        return {"status": "ok" if self.healthy else "unavailable", "completions": "reading" if self.healthy else "x"}

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False


@dataclass
class Site:
    """A config on tmp_path, the fakes, and the directories a route may touch."""

    root: Path
    cfg: Config = field(default_factory=Config)
    publisher: FakePublisher = field(default_factory=FakePublisher)
    listener: FakeListener = field(default_factory=FakeListener)

    def __post_init__(self) -> None:
        self.cfg.storage.media_root = str(self.root / "media")
        self.cfg.storage.results_dir = str(self.root / "results")
        self.cfg.api.state_dir = str(self.root / "state")
        self.cfg.limits.max_file_mb = MAX_FILE_MB
        for d in (self.media, self.results):
            d.mkdir(parents=True)
        self.store = TaskStore(self.cfg.api.state_dir)

    @property
    def media(self) -> Path:
        return Path(self.cfg.storage.media_root)

    @property
    def results(self) -> Path:
        return Path(self.cfg.storage.results_dir)

    @property
    def uploads(self) -> Path:
        return self.media / self.cfg.api.upload_subdir

    @contextmanager
    def client(self, token: str = "", listen: tuple[str, int] | None = None, tuning: Tuning | None = None,
               **kw: Any) -> Iterator[TestClient]:  # fmt: skip
        app = create_app(self.cfg, token, listen, tuning=tuning, publisher=self.publisher, listener=self.listener)
        with TestClient(app, **kw) as client:
            yield client

    def assert_nothing_kept(self) -> None:
        assert self.publisher.jobs == [], "nothing published"
        assert os.listdir(self.uploads) == [], "no upload or partial upload left"
        assert os.listdir(self.cfg.api.state_dir) == [], "no task recorded"


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


@pytest.fixture
def client(site: Site) -> Iterator[TestClient]:
    with site.client() as c:
        yield c


AUDIO = part("file", b"RIFF-audio", "a.wav")


def send(client: TestClient, body: bytes | Iterator[bytes], content_type: str = MULTIPART, **headers: str) -> Any:
    return client.post("/transcriptions", content=body, headers={"Content-Type": content_type, **headers})


def refused(r: Any, status: int, code: str) -> None:
    assert (r.status_code, r.json()["code"]) == (status, code), r.text


def test_an_upload_is_kept_recorded_and_queued(site: Site, client: TestClient) -> None:
    data = {"language": "en", "formats": "json,srt", "word_timestamps": "true"}
    r = client.post("/transcriptions", files={"file": ("Discurso JFK.FLAC", b"fLaC-audio")}, data=data)
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    assert r.json() == {"task_id": task_id, "status": "En proceso"}
    assert r.headers["location"] == f"/transcriptions/{task_id}"
    assert site.publisher.jobs == [{"task_id": task_id, "audio_path": f"uploads/{task_id}.flac", "language": "en",
                                    "formats": ["json", "srt"], "word_timestamps": True}]  # fmt: skip
    assert (site.uploads / f"{task_id}.flac").read_bytes() == b"fLaC-audio"
    assert os.listdir(site.uploads) == [f"{task_id}.flac"], "named by task id, no partial left"
    shown = client.get(f"/transcriptions/{task_id}").json()
    assert (shown["status"], shown["state"], shown["filename"]) == ("En proceso", "queued", "Discurso JFK.FLAC")
    assert (shown["text"], shown["results"], shown["progress"]) == (None, {}, None)
    assert [h["state"] for h in shown["history"]] == ["queued"]


def test_a_task_shows_its_progress_then_its_result_files(site: Site, client: TestClient) -> None:
    task_id = send(client, form(AUDIO)).json()["task_id"]
    site.store.apply(Completion(task_id, "processing", duration_s=600.0, progress=0.25, audio_done_s=150.0))
    shown = client.get(f"/transcriptions/{task_id}").json()
    assert (shown["status"], shown["progress"]) == ("En curso", {"fraction": 0.25, "audio_done_s": 150.0,
                                                                  "duration_s": 600.0})  # fmt: skip
    txt, as_json = site.results / f"{task_id}.txt", site.results / f"{task_id}.json"
    txt.write_text("the transcript")
    as_json.write_text('{"text": "the transcript"}')
    site.store.apply(Completion(task_id, "done", text="the transcript", language="en", duration_s=600.0,
                                results={"txt": str(txt), "json": str(as_json)}))  # fmt: skip
    shown = client.get(f"/transcriptions/{task_id}").json()
    assert (shown["status"], shown["state"], shown["text"], shown["progress"]) == ("Completado", "done",
                                                                                   "the transcript", None)  # fmt: skip
    assert shown["results"] == {"txt": f"/transcriptions/{task_id}/result.txt",
                                "json": f"/transcriptions/{task_id}/result.json"}  # fmt: skip
    r = client.get(shown["results"]["txt"])
    assert (r.status_code, r.text) == (200, "the transcript")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["content-disposition"] == f'attachment; filename="{task_id}.txt"'
    assert r.headers["content-length"] == str(len("the transcript"))
    r = client.get(shown["results"]["json"])
    assert (r.status_code, r.headers["content-type"]) == (200, "application/json; charset=utf-8")
    refused(client.get(f"/transcriptions/{task_id}/result.srt"), 404, "result_not_found")  # not recorded
    refused(client.get(f"/transcriptions/{task_id}/result.docx"), 404, "result_not_found")  # not a format
    txt.unlink()
    refused(client.get(f"/transcriptions/{task_id}/result.txt"), 404, "result_not_found")  # recorded, gone


def test_a_failed_task_shows_its_error(site: Site, client: TestClient) -> None:
    task_id = send(client, form(AUDIO)).json()["task_id"]
    site.store.apply(Completion(task_id, "failed", error={"code": "invalid_audio", "message": "not audio"}))
    shown = client.get(f"/transcriptions/{task_id}").json()
    assert (shown["status"], shown["error"]["code"], shown["text"]) == ("Error", "invalid_audio", None)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/transcriptions/" + "x" * 129, 400, "invalid_task_id"),
        ("/transcriptions/bad%20id", 400, "invalid_task_id"),
        ("/transcriptions/nope", 404, "task_not_found"),
        ("/transcriptions/bad%20id/result.txt", 400, "invalid_task_id"),
        ("/transcriptions/nope/result.txt", 404, "task_not_found"),
        ("/nope", 404, "not_found"),
    ],
)
def test_gets_that_find_nothing(client: TestClient, path: str, status: int, code: str) -> None:
    refused(client.get(path), status, code)


def test_a_wrong_method_is_refused(client: TestClient) -> None:
    refused(client.delete("/transcriptions"), 405, "method_not_allowed")


def test_a_record_that_cannot_be_read_is_an_internal_error(site: Site) -> None:
    (Path(site.cfg.api.state_dir) / "broken.json").write_text("{not json")
    with site.client(raise_server_exceptions=False) as client:
        r = client.get("/transcriptions/broken")
    assert (r.status_code, r.json()) == (500, {"code": "internal_error",
                                               "detail": "the API failed to answer; see its log"})  # fmt: skip


def test_healthz_follows_the_completion_listener(site: Site, client: TestClient) -> None:
    assert site.listener.running, "started with the app"
    r = client.get("/healthz")
    assert (r.status_code, r.json()["status"]) == (200, "ok")
    site.listener.healthy = False
    r = client.get("/healthz")
    assert (r.status_code, r.json()["status"]) == (503, "unavailable")


def test_the_app_stops_its_parts_when_it_stops(site: Site) -> None:
    with site.client():
        assert site.listener.running and not site.publisher.closed
    assert not site.listener.running and site.publisher.closed


def trickle() -> Iterator[bytes]:
    """A body of no declared length, past the cap."""
    yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
    for _ in range(20):
        yield b"x" * 1000


LONG_HEADER = b"X: " + b"a" * 3000 + b"\r\n"
# Diarization fields a worker would refuse, and the 422's detail for each.
BAD_SPEAKERS: list[tuple[tuple[bytes, ...], str]] = [
    ((part("diarize", b"maybe"),), "diarize must be true or false"),
    ((part("speakers", b"two"),), "speakers must be a whole number"),
    ((part("speakers", b"2.5"),), "speakers must be a whole number"),
    ((part("min_speakers", b"-1"),), "min_speakers must be a whole number"),
    ((part("max_speakers", "²".encode()),), "max_speakers must be a whole number"),
    ((part("speakers", b"1_0"),), "speakers must be a whole number"),
    ((part("speakers", b"0"),), "speakers must be at least 1, got 0"),
    ((part("speakers", b"11"),), "speakers is 11; the limit is 10 (diarize.max_speakers)"),
    ((part("max_speakers", b"9" * 1000),), "max_speakers is 9999999999999999999999999999999999999...; the limit is "
                                           "10 (diarize.max_speakers)"),
    ((part("speakers", b"2"), part("min_speakers", b"1")),
     "speakers is an exact count: send it or min_speakers/max_speakers, not both"),
    ((part("min_speakers", b"4"), part("max_speakers", b"3")), "min_speakers (4) is more than max_speakers (3)"),
    ((part("diarize", b"false"), part("speakers", b"2")),
     "speakers is set but diarize is false: speaker counts are for diarized jobs"),
]  # fmt: skip
ALL_FIELDS = (part("language", b"en"), part("formats", b"txt"), part("word_timestamps", b"1"), part("diarize", b"1"),
              part("speakers", b"2"), part("min_speakers", b""), part("max_speakers", b""))  # fmt: skip
BAD_UPLOADS: dict[str, tuple[dict[str, Any], int, str]] = {
    # kind: (send()'s arguments, status, code)
    "not-multipart": ({"body": b"RIFF", "content_type": "audio/wav"}, 415, "unsupported_media_type"),
    "no-boundary": ({"body": form(AUDIO), "content_type": "multipart/form-data"}, 400, "malformed_body"),
    "bad-length": ({"body": form(AUDIO), "content-length": "12x"}, 400, "malformed_body"),
    "declared-too-large": ({"body": form(part("file", b"x" * 80_000, "a.wav"))}, 413, "file_too_large"),
    "streamed-too-large": ({"body": trickle()}, 413, "file_too_large"),
    "file-over-cap": ({"body": form(part("file", b"x" * 10_486, "a.wav"))}, 413, "file_too_large"),
    "not-multipart-data": ({"body": b"garbage without a boundary\r\n"}, 400, "malformed_body"),
    "no-closing-boundary": ({"body": AUDIO}, 400, "incomplete_body"),
    "no-disposition": ({"body": form(part("file", b"RIFF", headers=b"X-Other: 1\r\n"))}, 400, "malformed_body"),
    "header-too-long": ({"body": form(part("file", b"RIFF", headers=LONG_HEADER))}, 400, "malformed_body"),
    "too-many-parts": ({"body": form(AUDIO, *ALL_FIELDS, part("language", b"es"))}, 400, "too_many_parts"),
    "two-files": ({"body": form(AUDIO, AUDIO)}, 400, "too_many_files"),
    "field-as-file": ({"body": form(AUDIO, part("language", b"en", "en.txt"))}, 400, "too_many_files"),
    "unknown-field": ({"body": form(AUDIO, part("model", b"large"))}, 400, "unexpected_field"),
    "field-twice": ({"body": form(AUDIO, part("language", b"en"), part("language", b"es"))}, 400, "duplicate_field"),
    "field-too-large": ({"body": form(AUDIO, part("language", b"e" * 1025))}, 400, "field_too_large"),
    "field-not-utf8": ({"body": form(AUDIO, part("language", b"\xff"))}, 400, "malformed_body"),
    "no-file": ({"body": form(part("language", b"en"))}, 422, "missing_file"),
    "empty-file": ({"body": form(part("file", b"", "a.wav"))}, 422, "empty_file"),
    "unknown-format": ({"body": form(AUDIO, part("formats", b"docx"))}, 422, "unsupported_format"),
    "no-formats": ({"body": form(AUDIO, part("formats", b" , "))}, 422, "unsupported_format"),
    "bad-word-timestamps": ({"body": form(AUDIO, part("word_timestamps", b"maybe"))}, 422, "invalid_option"),
}


@pytest.mark.parametrize("kind", BAD_UPLOADS)
def test_a_refused_upload_leaves_nothing(site: Site, client: TestClient, kind: str) -> None:
    args, status, code = BAD_UPLOADS[kind]
    args = dict(args)
    r = send(client, args.pop("body"), args.pop("content_type", MULTIPART), **args)
    refused(r, status, code)
    assert r.headers["connection"] == "close", "the rest of a refused upload is never read"
    site.assert_nothing_kept()


def test_an_upload_too_slow_from_the_start_is_refused(site: Site) -> None:
    with site.client(tuning=Tuning(upload_grace_s=0.0)) as client:
        r = send(client, form(AUDIO))
    refused(r, 408, "upload_timeout")
    assert "uploads must average 16 KiB/s" in r.json()["detail"]
    site.assert_nothing_kept()


def test_no_upload_while_the_publisher_is_full(site: Site, client: TestClient) -> None:
    site.publisher.full = True
    r = send(client, form(AUDIO))
    refused(r, 503, "queue_unavailable")
    assert r.headers["retry-after"] == "10"
    site.assert_nothing_kept()


@pytest.mark.parametrize("error", [pika.exceptions.AMQPConnectionError("gone"), OSError("unreachable")])
def test_an_upload_that_cannot_be_queued_is_removed(site: Site, client: TestClient, error: Exception) -> None:
    site.publisher.fail = error
    refused(send(client, form(AUDIO)), 503, "queue_unavailable")
    site.assert_nothing_kept()


def test_the_upload_slots_are_shared_out_by_client() -> None:
    # Concurrent uploads cannot be held open through TestClient (it reads a body before the app
    # sees it); test_api_flood.py holds real ones. These are the slots the upload route takes.
    slots = UploadSlots(total=3, per_client=2)
    with slots.take("10.0.0.1"), slots.take("10.0.0.1"):
        with pytest.raises(ApiError) as e:
            slots.take("10.0.0.1").__enter__()
        assert (e.value.status, e.value.code, e.value.headers) == (503, "too_many_uploads", {"Retry-After": "5"})
        assert "from your address" in e.value.message
        with slots.take("10.0.0.2"):
            with pytest.raises(ApiError) as e:
                slots.take("10.0.0.3").__enter__()
            assert (e.value.code, e.value.message) == ("too_many_uploads",
                                                       "3 uploads are in progress; try again shortly")  # fmt: skip
    assert (slots.count, dict(slots.by_client)) == (0, {})


def test_a_token_guards_every_route_but_healthz(site: Site) -> None:
    with site.client(token=TOKEN) as client:
        wrong = {"Authorization": "Bearer wrong-token-0123456789"}
        answers = [
            send(client, form(AUDIO)),
            client.get("/transcriptions/nope"),
            client.get("/transcriptions/nope/result.txt"),
            client.get("/transcriptions/nope", headers=wrong),
        ]
        for r in answers:
            refused(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == 'Bearer realm="whisperd"'
        site.assert_nothing_kept()
        assert client.get("/healthz").status_code == 200
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert send(client, form(AUDIO), **bearer).status_code == 202
        refused(client.get("/transcriptions/nope", headers=bearer), 404, "task_not_found")


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://rebound.example", "Host": "rebound.example"},  # a name, even the same one
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_cross_site_uploads_are_refused(site: Site, client: TestClient, headers: dict[str, str]) -> None:
    refused(send(client, form(AUDIO), **headers), 403, "cross_origin")
    site.assert_nothing_kept()


def test_listed_and_same_address_origins_are_accepted(site: Site) -> None:
    site.cfg.api.allowed_origins = ["https://intranet.example"]
    with site.client() as client:
        same_address = {"Origin": "http://127.0.0.1:8080", "Host": "127.0.0.1:8080", "Sec-Fetch-Site": "same-origin"}
        for headers in ({"Origin": "https://INTRANET.example"}, {"Sec-Fetch-Site": "none"}, same_address):
            assert send(client, form(AUDIO), **headers).status_code == 202, headers


def test_the_host_header_must_name_this_api(site: Site) -> None:
    tuning = Tuning(allowed_hosts=("api.intranet.example",))
    with site.client(listen=("127.0.0.1", 8080), tuning=tuning, base_url="http://127.0.0.1:8080") as client:
        for host in ("127.0.0.1:8080", "localhost", "[::1]:8080", "api.intranet.example:8443"):
            assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("rebound.example", "127.0.0.1:8081", "localhost.rebound.example"):
            r = client.get("/healthz", headers={"Host": host})
            refused(r, 400, "invalid_host")
            assert r.headers["connection"] == "close"
        refused(send(client, form(AUDIO), Host="rebound.example"), 400, "invalid_host")
    site.assert_nothing_kept()


def test_the_openapi_document_describes_the_upload_form(client: TestClient) -> None:
    openapi = client.get("/openapi.json").json()
    schema = openapi["paths"]["/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert sorted(schema["properties"]) == ["diarize", "file", "formats", "language", "max_speakers", "min_speakers",
                                            "speakers", "word_timestamps"]  # fmt: skip
    assert schema["properties"]["speakers"]["type"] == "integer"
    assert (schema["properties"]["speakers"]["minimum"], schema["properties"]["speakers"]["maximum"]) == (1, 50)
    assert schema["properties"]["diarize"]["type"] == "boolean"


@pytest.mark.parametrize(
    ("data", "options"),
    [
        ({"diarize": "true", "speakers": "3"}, {"diarize": True, "speakers": 3}),
        ({"diarize": "on", "min_speakers": " 2 ", "max_speakers": "4"}, {"diarize": True, "min_speakers": 2,
                                                                          "max_speakers": 4}),
        ({"diarize": "false"}, {"diarize": False}),
        ({"diarize": "0"}, {"diarize": False}),
        ({"diarize": "", "speakers": ""}, {}),  # empty = not sent: the workers' diarize.default decides
        ({"max_speakers": "5"}, {"max_speakers": 5}),  # without diarize: for diarize.default, if it turns it on
        ({"diarize": "yes", "speakers": "10"}, {"diarize": True, "speakers": 10}),  # diarize.max_speakers
    ],
)  # fmt: skip
def test_the_diarization_fields_reach_the_job(site: Site, client: TestClient, data: dict[str, str],
                                              options: dict[str, Any]) -> None:  # fmt: skip
    r = client.post("/transcriptions", files={"file": ("a.wav", b"RIFF-audio")}, data=data)
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    assert site.publisher.jobs == [{"task_id": task_id, "audio_path": f"uploads/{task_id}.wav", **options}]


@pytest.mark.parametrize(("parts", "detail"), BAD_SPEAKERS)
def test_bad_diarization_fields_say_why(site: Site, client: TestClient, parts: tuple[bytes, ...], detail: str) -> None:
    r = send(client, form(AUDIO, *parts))
    assert (r.status_code, r.json()) == (422, {"code": "invalid_option", "detail": detail})
    assert r.headers["connection"] == "close", "the rest of a refused upload is never read"
    site.assert_nothing_kept()


def test_the_form_checks_speakers_as_a_worker_would() -> None:
    from whisperd.api.form import job_options

    assert job_options({"diarize": "true", "speakers": "12"}, max_speakers=12)["speakers"] == 12
    with pytest.raises(ApiError) as e:
        job_options({"diarize": "true", "speakers": "12"}, max_speakers=10)
    assert (e.value.status, e.value.code, e.value.message) == (
        422, "invalid_option", "speakers is 12; the limit is 10 (diarize.max_speakers)",
    )  # fmt: skip
    assert job_options({}, max_speakers=10) == {"language": None, "formats": None, "word_timestamps": False,
                                                 "diarize": None, "speakers": None, "min_speakers": None,
                                                 "max_speakers": None}  # fmt: skip
