"""Shared fixtures: the real broker, the real daemon as a subprocess, a fake NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))

from clips import DATA_DIR, FIXTURE_MODEL, JFK  # noqa: E402
from rabbit_node import RabbitNode  # noqa: E402

BROKER_URL = os.environ.get("WHISPERD_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672/%2F")
REPO = Path(__file__).resolve().parent.parent


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_toml(path: Path, data: dict[str, dict[str, Any]]) -> None:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class NotifyListener:
    """A stand-in for systemd's notify socket that records (sender pid, message)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[int, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        creds_size = struct.calcsize("3i")
        while not self._stop:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:creds_size])[0]
            self.messages.append((pid, data.decode()))

    def lines(self) -> list[str]:
        return [line for _, msg in list(self.messages) for line in msg.splitlines()]

    def count(self, line: str) -> int:
        return sum(1 for x in self.lines() if x == line)

    def statuses(self) -> list[str]:
        return [x[7:] for x in self.lines() if x.startswith("STATUS=")]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


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
        for q in (self.job_queue, f"{self.job_queue}.dead", self.result_queue):
            try:
                if not self.ch.is_open:
                    self.ch = self.conn.channel()
                self.ch.queue_delete(q)
            except Exception:
                pass
        if self.conn.is_open:
            self.conn.close()


class Daemon:
    """``whisperd run`` as a real subprocess with its own config, media and results directories."""

    def __init__(self, root: Path, client: BrokerClient, **sections: dict[str, Any]) -> None:
        self.root = root
        self.media = root / "media"
        self.results = root / "results"
        self.media.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "whisperd.toml"
        self.log_path = root / "whisperd.log"
        self.notify = NotifyListener(root / "notify.sock")
        self.proc: subprocess.Popen | None = None
        self.config: dict[str, dict[str, Any]] = {
            "broker": {"url": client.url, "job_queue": client.job_queue, "result_queue": client.result_queue,
                       "reconnect_max_s": 2.0},
            "model": {"name": str(FIXTURE_MODEL)},
            "storage": {"media_root": str(self.media), "results_dir": str(self.results)},
            "workers": {"count": 1, "drain_timeout": 60.0},
        }  # fmt: skip
        self.configure(**sections)

    def configure(self, **sections: dict[str, Any]) -> None:
        for name, values in sections.items():
            self.config.setdefault(name, {}).update(values)
        write_toml(self.config_path, self.config)

    def start(self, wait_ready: bool = True, env: dict[str, str] | None = None) -> Daemon:
        full_env = {**os.environ, "NOTIFY_SOCKET": self.notify.path, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "whisperd", "run", "--config", str(self.config_path)],
            env=full_env, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )  # fmt: skip
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, count: int = 1, timeout: float = 120) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"whisperd exited with {self.proc.returncode}:\n{self.log()}")
            return self.notify.count("READY=1") >= count

        wait_for(ready, timeout, f"READY=1 #{count}\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def workers(self) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [k for k in kids if _title(k).startswith("whisperd: worker")]

    def titles(self) -> list[str]:
        return sorted(_title(w) for w in self.workers())

    def busy_worker(self, timeout: float = 60) -> psutil.Process:
        return wait_for(
            lambda: next((w for w in self.workers() if "[busy" in _title(w)), None), timeout, "a busy worker"
        )

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGQUIT)
                self.proc.wait(20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        if self.proc is not None:
            self.log_file.close()
        self.notify.close()

    def stage(self, source: Path, name: str) -> str:
        dest = self.media / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        return name


def _title(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline()).strip()
    except psutil.Error:
        return ""


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
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """66 s of speech (jfk.flac six times): a job that takes several seconds with the fixture model."""
    out = tmp_path_factory.mktemp("audio") / "long.wav"
    inputs = [arg for _ in range(6) for arg in ("-i", str(JFK.path))]
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", *inputs, "-filter_complex", "concat=n=6:v=0:a=1",
         "-ar", "16000", "-ac", "1", str(out)],
        check=True,
    )  # fmt: skip
    return out


__all__ = ["DATA_DIR", "BrokerClient", "Daemon", "wait_for"]
