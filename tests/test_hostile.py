"""Hostile input against one real daemon: every kind gets its own coded answer, and the daemon serves on.

One worker (fixture model, real ffmpeg, real broker) takes every kind in turn; a good job after
them proves it is not wedged. An inotify watch on a directory outside media_root, and on a file
hard-linked into it, proves nothing outside was read.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import re
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import BrokerClient, Daemon, wait_for

from devkit.clips import JFK

MAX_DURATION_S = 120.0
MAX_FILE_MB = 5.0
BOMB_RSS_ALLOWANCE_MB = 64 + 6 * 16000 * MAX_DURATION_S / 2**20  # chunks + the s16 and float32 audio

IN_ACCESS, IN_OPEN = 0x1, 0x20


class Inotify:
    """Reads and opens of watched paths, by anyone (the kernel tells, not the daemon)."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        self.names: dict[int, str] = {}

    def watch(self, path: Path, mask: int) -> None:
        wd = self.libc.inotify_add_watch(self.fd, str(path).encode(), mask)
        assert wd >= 0, os.strerror(ctypes.get_errno())
        self.names[wd] = str(path)

    def events(self) -> list[str]:
        out = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            i = 0
            while i < len(data):
                wd, mask, _, size = struct.unpack_from("iIII", data, i)
                name = data[i + 16 : i + 16 + size].rstrip(b"\0").decode()
                out.append(f"{self.names.get(wd)}/{name} mask={mask:#x}")
                i += 16 + size

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Kind:
    """One hostile input: how to make it, and the coded answer it must get."""

    name: str
    body: Callable[[Env], bytes | dict]
    code: str  # error.code of a failed completion, or "dead:<text>" for a dead letter without one
    props: dict[str, Any] | None = None


@dataclass
class Env:
    daemon: Daemon
    outside: Path
    task: str

    @property
    def media(self) -> Path:
        return self.daemon.media

    def job(self, audio_path: Any, **fields: Any) -> dict:
        return {"task_id": self.task, "audio_path": audio_path, **fields}

    def file(self, name: str, data: bytes) -> dict:
        (self.media / name).write_bytes(data)
        return self.job(name)

    def ffmpeg(self, name: str, *args: str) -> dict:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args, str(self.media / name)], check=True)
        return self.job(name)

    def link(self, name: str, target: str | Path) -> dict:
        os.symlink(target, self.media / name)
        return self.job(name)


def _bomb(codec: str, container: str, ext: str, seconds: int = 3600) -> Callable[[Env], dict]:
    """A small file whose packets all carry timestamp 0: ffmpeg's -t never cuts it."""

    def make(env: Env) -> dict:
        return env.ffmpeg(
            f"{env.task}.{ext}", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", str(seconds),
            "-c:a", codec, "-bsf:a", "setts=ts=0", "-f", container,
        )  # fmt: skip

    return make


def _raw(env: Env, fields: str) -> bytes:
    """A job body written by hand, for what json.dumps would not produce (a lone surrogate escape)."""
    return f'{{"task_id": "{env.task}", {fields}}}'.encode()


def _hard_link(env: Env) -> dict:
    os.link(env.outside / "linked.wav", env.media / f"{env.task}.wav")
    return env.job(f"{env.task}.wav")


def _fifo(env: Env) -> dict:
    os.mkfifo(env.media / env.task)
    return env.job(env.task)


def _sparse(env: Env) -> dict:
    with open(env.media / env.task, "wb") as f:
        f.truncate(int((MAX_FILE_MB + 1) * 2**20))
    return env.job(env.task)


def _truncated_flac(env: Env) -> dict:
    data = JFK.path.read_bytes()
    return env.file(f"{env.task}.flac", data[: len(data) // 3])


def _png(env: Env) -> dict:
    return env.ffmpeg(f"{env.task}.png", "-f", "lavfi", "-i", "color=c=red:s=64x64", "-frames:v", "1")


def _video_only(env: Env) -> dict:
    return env.ffmpeg(f"{env.task}.mkv", "-f", "lavfi", "-i", "testsrc=s=64x64:d=1", "-c:v", "ffv1")


def _wav_header_lies(env: Env) -> dict:
    """A WAV whose header claims 2 GB of data followed by 0.5 s: damaged, not decoded in part."""
    pcm = b"\0\0" * 8000
    header = (
        b"RIFF" + struct.pack("<I", 0x7FFFFFFF) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    )
    return env.file(f"{env.task}.wav", header + b"data" + struct.pack("<I", 0x7FFFFF00) + pcm)


KINDS = [
    # bodies: no task id can be read, so no completion; dead-lettered with the reason
    Kind("not_json", lambda e: b"this is not json", "dead:not valid JSON"),
    Kind("invalid_utf8", lambda e: b'\xff\xfe{"task_id": "x"}', "dead:not valid JSON"),
    Kind("empty_body", lambda e: b"", "dead:not valid JSON"),
    Kind("deep_array", lambda e: b"[" * 60000, "dead:nested too deeply"),
    Kind("deep_object", lambda e: b'{"a":' * 12000, "dead:nested too deeply"),
    Kind("oversized_body", lambda e: e.job("a.wav", pad="x" * 70000), "dead:limits.max_job_bytes"),
    Kind("json_array", lambda e: b"[1, 2, 3]", "dead:must be a JSON object"),
    Kind("json_null", lambda e: b"null", "dead:must be a JSON object"),
    Kind("missing_task_id", lambda e: {"audio_path": "a.wav"}, "dead:task_id is missing"),
    Kind("traversal_task_id", lambda e: {"task_id": "../../etc/passwd", "audio_path": "a.wav"}, "dead:task_id must"),
    Kind("long_task_id", lambda e: {"task_id": "a" * 129, "audio_path": "a.wav"}, "dead:task_id must"),
    # fields
    Kind("nan_audio_path", lambda e: f'{{"task_id": "{e.task}", "audio_path": NaN}}'.encode(), "invalid_audio_path"),
    Kind("missing_audio_path", lambda e: {"task_id": e.task}, "invalid_audio_path"),
    Kind("numeric_audio_path", lambda e: e.job(12345), "invalid_audio_path"),
    Kind("nul_in_audio_path", lambda e: e.job("a.wav\x00.txt"), "invalid_audio_path"),
    Kind("long_audio_path", lambda e: e.job("a/" * 2500 + "x.wav"), "invalid_audio_path"),
    Kind("huge_initial_prompt", lambda e: e.job("a.wav", initial_prompt="palabra " * 1500), "invalid_option"),
    Kind("object_initial_prompt", lambda e: e.job("a.wav", initial_prompt={"a": 1}), "invalid_option"),
    Kind("unknown_format", lambda e: e.job("a.wav", formats=["exe"]), "unsupported_format"),
    Kind("formats_not_a_list", lambda e: e.job("a.wav", formats="json"), "unsupported_format"),
    Kind("unknown_language", lambda e: e.job("a.wav", language="klingon"), "unsupported_language"),
    Kind("numeric_language", lambda e: e.job("a.wav", language=7), "unsupported_language"),
    Kind("unknown_task", lambda e: e.job("a.wav", task="rm -rf /"), "unsupported_task"),
    Kind("string_word_timestamps", lambda e: e.job("a.wav", word_timestamps="yes"), "invalid_option"),
    Kind("lone_surrogate_audio_path", lambda e: _raw(e, '"audio_path": "a\\ud800.wav"'), "invalid_audio_path"),
    Kind("lone_low_surrogate_audio_path", lambda e: _raw(e, '"audio_path": "\\udfff"'), "invalid_audio_path"),
    Kind(
        "lone_surrogate_initial_prompt",
        lambda e: _raw(e, '"audio_path": "a.wav", "initial_prompt": "hola \\ud800"'),
        "invalid_option",
    ),
    Kind(
        "unpaired_high_surrogate_ends_prompt",
        lambda e: _raw(e, '"audio_path": "a.wav", "initial_prompt": "\\ud83d"'),
        "invalid_option",
    ),
    Kind(
        "lone_surrogate_in_envelope",
        lambda e: f'{{"messageId": "m", "message": {{"taskId": "{e.task}", "audioPath": "\\ud800"}}}}'.encode(),
        "invalid_audio_path",
    ),
    Kind(
        "masstransit_bad_inner",
        lambda e: {"messageId": "m", "message": {"taskId": e.task, "audioPath": ["x"]}},
        "invalid_audio_path",
    ),
    # paths
    Kind("absolute_outside", lambda e: e.job(str(e.outside / "secret.wav")), "path_outside_media_root"),
    Kind(
        "relative_traversal",
        lambda e: e.job(f"../../{e.outside.parent.name}/outside/secret.wav"),
        "path_outside_media_root",
    ),  # fmt: skip
    Kind("symlink_outside", lambda e: e.link(e.task, e.outside / "secret.wav"), "path_outside_media_root"),
    Kind("symlink_to_device", lambda e: e.link(e.task, "/dev/zero"), "path_outside_media_root"),
    Kind("symlink_loop", lambda e: e.link(e.task, e.media / e.task), "file_unreadable"),
    Kind("dangling_symlink", lambda e: e.link(e.task, e.media / "nothing-here.wav"), "file_not_found"),
    Kind("hard_link_outside", _hard_link, "path_outside_media_root"),
    Kind("directory", lambda e: (e.media / e.task).mkdir() or e.job(e.task), "not_a_file"),
    Kind("fifo", _fifo, "not_a_file"),
    Kind("missing_file", lambda e: e.job("no-such-file.wav"), "file_not_found"),
    Kind("empty_file", lambda e: e.file(e.task, b""), "empty_file"),
    Kind("sparse_too_large", _sparse, "file_too_large"),
    # file contents, containers and codecs
    Kind("random_bytes", lambda e: e.file(e.task, os.urandom(50000)), "invalid_audio"),
    Kind("text_file", lambda e: e.file(f"{e.task}.txt", b"hola mundo\n" * 100), "invalid_audio"),
    Kind("truncated_flac", _truncated_flac, "invalid_audio"),
    Kind("wav_header_lies", _wav_header_lies, "invalid_audio"),
    Kind("png_image", _png, "invalid_audio"),
    Kind("video_without_audio", _video_only, "invalid_audio"),
    Kind(
        "hls_playlist_outside",
        lambda e: e.file(f"{e.task}.m3u8", f"#EXTM3U\n#EXTINF:10,\nfile://{e.outside}/secret.wav\n".encode()),
        "invalid_audio",
    ),
    Kind(
        "concat_script_outside",
        lambda e: e.file(f"{e.task}.txt", f"ffconcat version 1.0\nfile '{e.outside}/secret.wav'\n".encode()),
        "invalid_audio",
    ),
    Kind(
        "sdp_network_stream",
        lambda e: e.file(f"{e.task}.sdp", b"v=0\nc=IN IP4 127.0.0.1\nm=audio 5004 RTP/AVP 0\n"),
        "invalid_audio",
    ),  # fmt: skip
    Kind(
        "too_long_honest_timestamps",
        lambda e: e.ffmpeg(f"{e.task}.flac", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "150"),
        "audio_too_long",
    ),
]
BOMBS = [
    Kind("zero_ts_bomb_flac_mkv", _bomb("flac", "matroska", "mkv"), "audio_too_long"),
    Kind("zero_ts_bomb_opus_mkv", _bomb("libopus", "matroska", "mka"), "audio_too_long"),
    Kind("zero_ts_bomb_aac_mov", _bomb("aac", "mov", "m4a", 1200), "audio_too_long"),
]


@pytest.fixture(scope="module", params=["openai-whisper", "faster-whisper"])
def env(request: pytest.FixtureRequest, real_weights: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A daemon per engine: the fixture model on openai-whisper, real tiny.en on faster-whisper."""
    root = tmp_path_factory.mktemp("hostile")
    outside = root / "outside"
    outside.mkdir()
    for name in ("secret.wav", "linked.wav"):
        (outside / name).write_bytes(JFK.path.read_bytes())
    client = BrokerClient(f"test-{uuid.uuid4().hex[:10]}")
    model = real_weights.section("tiny.en", request.param) if request.param == "faster-whisper" else {}
    daemon = Daemon(
        root / "d", client, model=model, limits={"max_duration_s": MAX_DURATION_S, "max_file_mb": MAX_FILE_MB}
    ).start()  # fmt: skip
    watch = Inotify()
    watch.watch(outside, IN_ACCESS | IN_OPEN)
    watch.watch(outside / "linked.wav", IN_ACCESS)
    yield client, daemon, outside, watch
    daemon.stop()
    client.close()
    watch.close()


def _run(client: BrokerClient, env: Env, kind: Kind) -> dict:
    made = kind.body(env)
    client.publish(made if isinstance(made, bytes) else json.dumps(made).encode(), **(kind.props or {}))
    if kind.code.startswith("dead:"):
        method, props, body = wait_for(lambda: _got(client, client.dead_queue), 60, f"{kind.name} dead-lettered")
        assert kind.code[5:] in props.headers["x-whisperd-reason"], props.headers
        return {"dead": props.headers["x-whisperd-reason"]}
    [c] = client.completions(1, 60)
    assert c["task_id"] == env.task
    return c


def _settled(client: BrokerClient) -> None:
    """The job queue empties: nothing waits and nothing stays unacked (the ack follows the answer)."""
    wait_for(lambda: client.depth(client.job_queue) == (0, 0), 10, "every delivery settled")


def _got(client: BrokerClient, queue: str) -> Any:
    method, props, body = client.ch.basic_get(queue, auto_ack=True)
    return (method, props, body) if method is not None else None


def words(text: str) -> list[str]:
    """Text without case and punctuation: tiny.en and the fixture model punctuate JFK differently."""
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def _good_job(client: BrokerClient, daemon: Daemon, task: str) -> dict:
    daemon.stage(JFK.path, f"{task}.flac")
    client.publish({"task_id": task, "audio_path": f"{task}.flac"})
    [c] = client.completions(1, 60)
    assert (c["task_id"], c["status"], words(c["text"])) == (task, "done", words(JFK.reference)), c
    return c


def test_the_watch_sees_reads_outside(env):
    """The inotify check below can fail: reading the outside file is seen."""
    _, _, outside, watch = env
    (outside / "secret.wav").read_bytes()
    assert any("secret.wav" in e for e in watch.events())


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_hostile_input_gets_its_code_and_the_daemon_serves_on(env, kind):
    client, daemon, outside, watch = env
    answer = _run(client, Env(daemon, outside, f"h-{kind.name.replace('_', '-')}"), kind)
    if not kind.code.startswith("dead:"):
        assert answer["status"] == "failed" and answer["error"]["code"] == kind.code, answer
    _settled(client)
    assert watch.events() == [], "something read outside media_root"


def test_zero_timestamp_bombs_stop_at_the_length_limit_with_bounded_memory(env):
    client, daemon, outside, watch = env
    _good_job(client, daemon, "before-bombs")
    [worker] = daemon.workers()
    rss_before, hwm_before = worker.memory_info().rss / 2**20, _vm_hwm_mb(worker.pid)
    for kind in BOMBS:
        answer = _run(client, Env(daemon, outside, f"b-{kind.name.replace('_', '-')}"), kind)
        assert answer["error"]["code"] == "audio_too_long", answer
        assert answer["processing_s"] < 60, answer
    assert daemon.workers() == [worker], "the worker was killed"
    peak = _vm_hwm_mb(worker.pid)
    assert peak <= max(hwm_before, rss_before + BOMB_RSS_ALLOWANCE_MB), (
        f"peak RSS {peak:.0f} MB; before the bombs RSS {rss_before:.0f} MB, peak {hwm_before:.0f} MB"
    )
    _good_job(client, daemon, "after-bombs")


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _reply_queue_refusing_publishes(client: BrokerClient) -> str:
    name = f"{client.job_queue}.reply-full"
    client.ch.queue_declare(name, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}, auto_delete=True)
    return name


REPLY_TO = {
    "reply_to_job_queue": lambda c: c.job_queue,
    "reply_to_dead_letter_queue": lambda c: c.dead_queue,
    "reply_to_refusing_queue": _reply_queue_refusing_publishes,
    "reply_to_bad_direct_reply": lambda c: "amq.rabbitmq.reply-to.g2dkAA9yYWJiaXRAbG9jYWxob3N0AAAA",
    "reply_to_missing_queue": lambda c: f"no-such-queue-{uuid.uuid4().hex}",
    # RabbitMQ 3.10 decodes a direct reply-to name with a dot as a pid and closes the whole
    # connection (541) when it is not one it knows: the completion must still go out once.
    "reply_to_direct_with_dot": lambda c: "amq.rabbitmq.reply-to.garbage.garbage",
    "reply_to_direct_two_dots": lambda c: "amq.rabbitmq.reply-to.a.b.c",
    "reply_to_direct_not_base64": lambda c: "amq.rabbitmq.reply-to.!!!.x",
    "reply_to_direct_not_a_pid": lambda c: "amq.rabbitmq.reply-to.g2gCYQFhAg==.abc",
    "reply_to_direct_pid_of_unknown_node": lambda c: "amq.rabbitmq.reply-to." + _pid_of("rabbit@nowhere"),
}


def _pid_of(node: str) -> str:
    """A direct reply-to name of the shape RabbitMQ gives out, for a pid on ``node``."""
    name = node.encode()
    term = b"\x83X" + b"v" + struct.pack(">H", len(name)) + name + os.urandom(12)
    return base64.b64encode(term).decode() + "." + base64.b64encode(os.urandom(16)).decode()


@pytest.mark.parametrize("name", list(REPLY_TO))
def test_hostile_reply_to_gets_one_completion_and_never_breaks_the_worker(env, name):
    client, daemon, outside, watch = env
    task = f"r-{name.replace('_', '-')}"
    [worker] = daemon.workers()
    daemon.stage(JFK.path, f"{task}.flac")
    reply_to = REPLY_TO[name](client)
    client.publish({"task_id": task, "audio_path": f"{task}.flac"}, reply_to=reply_to, correlation_id="c" * 255)
    [c] = client.completions(1, 60)
    assert (c["task_id"], c["status"]) == (task, "done"), c
    _good_job(client, daemon, f"{task}-next")
    assert client.get(client.result_queue, 2) is None, "a completion was repeated"
    _settled(client)  # nothing came back as a job
    assert _got(client, client.dead_queue) is None
    assert daemon.workers() == [worker]
    assert "broker unreachable" not in daemon.log()


def _nested_table(depth: int) -> dict:
    h: Any = {"leaf": 1}
    for _ in range(depth):
        h = {"a": h}
    return {"x-nested": h}


def _nested_array(depth: int) -> dict:
    h: Any = [1]
    for _ in range(depth):
        h = [h]
    return {"x-nested": h}


def _mixed(depth: int) -> dict:
    h: Any = 1
    for i in range(depth):
        h = {"a": h} if i % 2 else [h]
    return {"x-nested": h}


HEADERS = {  # name -> (headers, answer): invalid_headers, or done for what a producer may really send
    "table_nested_800": (_nested_table(800), "invalid_headers"),
    "table_nested_40": (_nested_table(40), "invalid_headers"),
    "table_nested_32": (_nested_table(32), "invalid_headers"),  # 33 levels with the top one
    "array_nested_800": (_nested_array(800), "invalid_headers"),
    "array_nested_40": (_nested_array(40), "invalid_headers"),
    "mixed_nested_300": (_mixed(300), "invalid_headers"),
    "flat_5000_values": ({f"k{i}": i for i in range(5000)}, "invalid_headers"),
    "wide_and_deep": ({f"k{i}": _nested_table(20) for i in range(300)}, "invalid_headers"),
    "table_nested_20": (_nested_table(20), "done"),
    "x_death_shaped": (
        {"x-death": [{"count": 3, "queue": "q", "reason": "rejected", "routing-keys": ["q"]}]},
        "done",
    ),  # fmt: skip
}


@contextlib.contextmanager
def _deep_recursion() -> Any:
    """pika encodes tables recursively too: the test's own publish needs the room."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


@pytest.mark.parametrize("name", list(HEADERS))
def test_headers_too_deep_or_too_many_are_parked_with_a_completion_and_no_reconnect(env, name):
    """pika decoded them before any callback: RecursionError closed the connection, the broker
    redelivered, the worker took it for an outage until the delivery limit dead-lettered it."""
    client, daemon, outside, watch = env
    headers, answer = HEADERS[name]
    task = f"hd-{name.replace('_', '-')}"
    [worker] = daemon.workers()
    reconnects = daemon.log().count("broker connection restored")
    daemon.stage(JFK.path, f"{task}.flac")
    with _deep_recursion():
        client.publish({"task_id": task, "audio_path": f"{task}.flac"}, headers=headers)
    [c] = client.completions(1, 60)
    assert c["task_id"] == task and (c["error"] or {}).get("code", c["status"]) == answer, c
    if answer == "invalid_headers":
        _, props, body = wait_for(lambda: _got(client, client.dead_queue), 30, "the parked job")
        assert json.loads(body)["task_id"] == task
        assert "invalid_headers" in props.headers["x-whisperd-reason"], props.headers
    _good_job(client, daemon, f"{task}-next")
    _settled(client)
    assert daemon.workers() == [worker]
    assert daemon.log().count("broker connection restored") == reconnects, "the worker reconnected"
    assert "broker unreachable" not in daemon.log()


def test_undecodable_headers_without_a_task_id_are_parked(env):
    client, daemon, outside, watch = env
    with _deep_recursion():
        client.publish(b"not even json", headers=_nested_table(800))
    _, props, body = wait_for(lambda: _got(client, client.dead_queue), 60, "the parked message")
    assert body == b"not even json" and "invalid_headers" in props.headers["x-whisperd-reason"]
    _good_job(client, daemon, "hd-no-task-next")
    _settled(client)


def test_hostile_headers_and_properties_are_ignored(env):
    client, daemon, outside, watch = env
    daemon.stage(JFK.path, "props.flac")
    headers = {"x-delivery-count": "many", "x-death": "forged", "nested": {"a": [1, {"b": None}]}, "x" * 200: "y"}
    client.publish(
        {"task_id": "props", "audio_path": "props.flac"}, headers=headers, message_id="m" * 255, priority=255,
        type="t" * 255, app_id="a" * 255, expiration="600000",
    )  # fmt: skip
    [c] = client.completions(1, 60)
    assert (c["task_id"], c["status"], words(c["text"])) == ("props", "done", words(JFK.reference)), c


def test_a_reused_task_id_with_other_audio_is_refused_and_results_kept(env):
    client, daemon, outside, watch = env
    first = _good_job(client, daemon, "reused")
    stored = {p: Path(p).read_bytes() for p in first["results"].values()}
    other = daemon.stage(JFK.path, "other.flac")
    client.publish({"task_id": "reused", "audio_path": other})
    [c] = client.completions(1, 60)
    assert c["status"] == "failed" and c["error"]["code"] == "task_id_conflict", c
    (daemon.media / "reused.flac").write_bytes(JFK.path.read_bytes()[:-1000])  # same path, other size
    client.publish({"task_id": "reused", "audio_path": "reused.flac"})
    [c] = client.completions(1, 60)
    assert c["status"] == "failed" and c["error"]["code"] == "task_id_conflict", c
    assert {p: Path(p).read_bytes() for p in first["results"].values()} == stored
    same_size = bytearray(JFK.path.read_bytes())
    same_size[len(same_size) // 2] ^= 0xFF  # same path, same size, other audio
    (daemon.media / "reused.flac").write_bytes(bytes(same_size))
    client.publish({"task_id": "reused", "audio_path": "reused.flac"})
    [c] = client.completions(1, 60)
    assert c["status"] == "failed" and c["error"]["code"] == "task_id_conflict", c
    (daemon.media / "reused.flac").write_bytes(JFK.path.read_bytes())
    client.publish({"task_id": "reused", "audio_path": "reused.flac"})  # the same job again: the stored answer
    [c] = client.completions(1, 60)
    assert c == first


def test_an_unexpected_error_is_settled_counted_and_ends_in_the_dead_letter_queue(env):
    """A results file that cannot be written (here a directory in its place) fails every attempt."""
    client, daemon, outside, watch = env
    (daemon.results / "unwritable.json").mkdir()
    daemon.stage(JFK.path, "unwritable.flac")
    client.publish({"task_id": "unwritable", "audio_path": "unwritable.flac"})
    [c] = client.completions(1, 120)
    assert c["status"] == "failed" and c["error"]["code"] == "attempts_exhausted", c
    method, props, body = wait_for(lambda: _got(client, client.dead_queue), 30, "the dead letter")
    assert json.loads(body)["task_id"] == "unwritable"
    assert "attempts_exhausted" in props.headers["x-whisperd-reason"]
    assert daemon.log().count("returning it to the queue") == 3
    _good_job(client, daemon, "after-unwritable")


def test_after_every_kind_the_daemon_still_serves_and_read_nothing_outside(env):
    client, daemon, outside, watch = env
    _good_job(client, daemon, "after-all")
    assert watch.events() == []
