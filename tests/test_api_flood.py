"""Floods against a real ``whisperd api``: slow uploads, connections that never send a request,
and uploads piling up while the broker is down. Each checks that a legitimate client is served
meanwhile and that the API is still there afterwards.

Other clients are other loopback addresses (127.0.0.2, 127.0.0.3, ...: every 127.x.y.z is this
host), all connecting to the API on 127.0.0.1; every flood is bounded in count and time.
"""

from __future__ import annotations

import functools
import http.client
import json
import select
import socket
import threading
import time
from collections import Counter

import psutil
import pytest
import requests
from api_process import RawHttp
from conftest import wait_for
from test_api_hostile import AUDIO, MULTIPART, HostileApi, api_maker, form, part, refused

from devkit.clips import JFK

# Shorter than the API's own grace (30 s) so the test need not wait that long; the rate floor is the same kind.
TRICKLE = {"UPLOAD_GRACE_S": 5.0, "UPLOAD_MIN_RATE": 4096}
INVALID_FORM = form(AUDIO, part("formats", b"docx"))  # 422 once it has a slot, 503 without; never published


class Trickler(threading.Thread):
    """An upload from ``source`` that sends its head, then one byte of its body every 0.5 s until
    the API answers (``answer``: status and code) or ``stop`` is called."""

    def __init__(self, api: HostileApi, source: str) -> None:
        super().__init__(daemon=True)
        self.body = form(AUDIO)
        self.conn = RawHttp(api.port, source=source)
        self.conn.post_head(MULTIPART, len(self.body))
        self.answer: tuple[int, str] | None = None
        self.answered = threading.Event()
        self._stop_sending = threading.Event()
        self.start()

    def run(self) -> None:
        for i in range(len(self.body)):
            if self._stop_sending.is_set():
                return
            if not self.conn.send(self.body[i : i + 1]) or select.select([self.conn.sock], [], [], 0.5)[0]:
                break
        try:
            status, _, body = self.conn.response(timeout=10)
            self.answer = (status, json.loads(body)["code"])
        except (OSError, http.client.HTTPException, ValueError):
            self.answer = (0, "closed")
        self.answered.set()

    def stop(self) -> None:
        self._stop_sending.set()
        self.join(15)
        self.conn.close()


@pytest.fixture
def make_api(broker, daemon_factory, tmp_path):
    yield from api_maker(broker, daemon_factory, tmp_path)


def taken_or_refused(api: HostileApi, t: Trickler, held: int) -> bool:
    """Whether the API answered the upload ``t`` or began it (one more under way than ``held``)."""
    return t.answered.is_set() or api.uploads_under_way() > held


def upload_answer(api: HostileApi) -> requests.Response:
    return api.send(INVALID_FORM)


def test_trickling_uploads_are_cut_off_and_a_legitimate_upload_gets_through(make_api):
    api = make_api(max_concurrent_uploads=4, upload_idle_timeout_s=60.0, constants=TRICKLE)
    slow = [Trickler(api, f"127.0.0.{i}") for i in range(2, 6)]  # four clients, one upload each: every slot
    try:
        wait_for(lambda: api.uploads_under_way() == 4, 10, "the four uploads under way")
        refused(upload_answer(api), 503, "too_many_uploads")
        started = time.monotonic()
        wait_for(lambda: api.post(JFK.path).status_code == 202, 30, "a legitimate upload accepted", interval=0.5)
        waited = time.monotonic() - started
        for t in slow:
            assert t.answered.wait(15), "the trickling upload was answered"
            assert t.answer == (408, "upload_timeout"), t.answer
    finally:
        for t in slow:
            t.stop()
    print(f"legitimate upload accepted after {waited:.1f} s of trickling uploads")
    assert api.jobs() == 1, "only the legitimate upload was queued"
    wait_for(lambda: len(list(api.uploads.iterdir())) == 1, 10, "the trickled uploads removed")


def test_one_client_gets_at_most_its_share_of_the_upload_slots(make_api):
    api = make_api(max_concurrent_uploads=4)  # each client address may hold 2
    slow = []
    try:
        for _ in range(4):
            held = api.uploads_under_way()
            t = Trickler(api, "127.0.0.2")
            slow.append(t)
            wait_for(functools.partial(taken_or_refused, api, t, held), 10, "the upload taken or refused")
        assert [t.answer for t in slow] == [None, None, (503, "too_many_uploads"), (503, "too_many_uploads")]
        started = time.monotonic()
        r = api.post(JFK.path)  # another client, while the first holds its two
        assert r.status_code == 202, r.text
        print(f"another client's upload accepted in {time.monotonic() - started:.2f} s")
        assert slow[0].answer is None and slow[1].answer is None, "the first client's two go on"
    finally:
        for t in slow:
            t.stop()
    assert api.jobs() == 1


class Sampler(threading.Thread):
    """The API process's open descriptors and RSS every 0.1 s: the peaks."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak_fds = self.peak_rss = 0
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.1):
            try:
                self.peak_fds = max(self.peak_fds, self.proc.num_fds())
                self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            except psutil.Error:
                return


def open_connections(port: int, source: str, count: int, head: bytes = b"") -> list[socket.socket]:
    """``count`` connections from ``source`` that send ``head`` (maybe nothing) and then nothing more."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    if head:
        for s in socks:
            poll = select.poll()  # not select(): these descriptors are past 1024
            poll.register(s, select.POLLOUT)
            poll.poll(5000)
            try:
                s.send(head)
            except OSError:
                pass
    return socks


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def legitimate_requests(api: HostileApi, task_id: str) -> list[float]:
    """A /healthz, a task view and an upload from 127.0.0.1; each must succeed: their latencies."""
    took = []
    for call, status in [
        (lambda: requests.get(f"{api.url}/healthz", timeout=10), 200),
        (lambda: api.get(task_id), 200),
        (lambda: api.send(form(part("file", b"RIFF", "a.wav"))), 202),
    ]:
        started = time.monotonic()
        r = call()
        took.append(time.monotonic() - started)
        assert r.status_code == status, r.text
    return took


def test_connections_that_send_no_request_cannot_exhaust_the_descriptors(make_api):
    head_timeout = 5.0
    api = make_api(nofile=1024, constants={"HEAD_TIMEOUT_S": head_timeout})
    task_id = api.task()
    sampler = Sampler(api.proc.pid)
    floods: dict[str, list[socket.socket]] = {}
    latencies: list[float] = []
    try:
        floods["connect-only"] = open_connections(api.port, "127.0.0.2", 1100)
        floods["partial-head"] = open_connections(api.port, "127.0.0.3", 100, b"GET /healthz HTTP/1.1\r\nHost: 127")
        upload_head = (f"POST /transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MULTIPART}\r\n"
                       "Content-Length: 100000\r\n\r\n").encode()  # fmt: skip
        floods["body-never-sent"] = open_connections(api.port, "127.0.0.4", 100, upload_head)
        ended = time.monotonic() + head_timeout + 5
        while time.monotonic() < ended:  # legitimate requests throughout, past the head timeout
            latencies += legitimate_requests(api, task_id)
        assert all(closed_by_server(s) for s in floods["partial-head"]), "idle connections closed after the timeout"
    finally:
        for socks in floods.values():
            for s in socks:
                s.close()
        sampler.done.set()
    sampler.join()
    print(f"peak fds {sampler.peak_fds}, peak RSS {sampler.peak_rss / 2**20:.0f} MiB, legitimate requests: "
          f"{len(latencies)}, slowest {max(latencies):.2f} s")  # fmt: skip
    assert max(latencies) < 5, latencies
    assert sampler.peak_fds < 1024
    assert api.health() is not None, "still serving"
    log = api.log_path.read_text()
    assert "Too many open files" not in log
    assert len(log.splitlines()) < 200, "the evictions are logged, not flooded"


@pytest.fixture
def make_private_api(private_broker, daemon_factory, tmp_path):
    yield from api_maker(private_broker, daemon_factory, tmp_path)


def test_gets_are_answered_while_uploads_wait_for_a_broker_that_is_down(make_private_api, private_broker, rabbit_node):
    retry_s = 8.0
    api = make_private_api(max_concurrent_uploads=64, constants={"PUBLISH_RETRY_S": retry_s})
    task_id = api.task()
    answers: list[tuple[int, str, float]] = []

    def upload() -> None:
        started = time.monotonic()
        try:
            r = api.send(form(part("file", b"RIFF", "a.wav")))
            answers.append((r.status_code, r.json()["code"], time.monotonic() - started))
        except requests.RequestException as e:
            answers.append((0, type(e).__name__, time.monotonic() - started))

    rabbit_node.stop_app()
    try:
        wait_for(lambda: api.answers().status_code == 503, 30, "the API to see the broker gone")
        uploads = [threading.Thread(target=upload, daemon=True) for _ in range(60)]
        for t in uploads:
            t.start()
        wait_for(lambda: len(list(api.uploads.iterdir())) >= 10, 30, "uploads waiting to be published")
        views = []
        for _ in range(5):
            started = time.monotonic()
            assert api.get(task_id).status_code == 200
            views.append(time.monotonic() - started)
            assert api.answers().status_code == 503
        for t in uploads:
            t.join(retry_s + 30)
    finally:
        rabbit_node.start_app()
    print(f"task views during the outage: slowest {max(views):.2f} s; uploads answered in at most "
          f"{max(a[2] for a in answers):.1f} s")  # fmt: skip
    assert max(views) < 2, views
    assert len(answers) == 60 and {a[0] for a in answers} == {503}, answers
    codes = Counter(a[1] for a in answers)  # too_many_uploads: more than this client's share at once
    assert codes["queue_unavailable"] and set(codes) <= {"queue_unavailable", "too_many_uploads"}, codes
    assert max(a[2] for a in answers) < retry_s + 10
    assert sorted(p.name for p in api.uploads.iterdir()) == [f"{task_id}.wav"], "the refused uploads removed"
    assert sorted(p.name for p in api.state.iterdir()) == [f"{task_id}.json"], "and their records"
    private_broker.connect()
    wait_for(api.health, 60, "the API to read completions again")
    assert api.send(form(part("file", b"RIFF", "a.wav"))).status_code == 202
    assert api.jobs() == 2
