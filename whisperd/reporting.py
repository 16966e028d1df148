"""Worker -> supervisor reports over a datagram socketpair, and the supervisor's settings back.

A worker sends its whole ``WorkerReport`` each second from its I/O loop and at every state
change. The supervisor treats the reports as the worker's heartbeat (a worker whose loop is
stuck stops reporting and gets replaced) and builds STATUS, ``whisperd status`` and the metrics
from them. Both ends use the dataclasses below, so a field is named in one place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger("whisperd.reporting")

MAX_REPORT = 8192


class WorkerState(StrEnum):
    """What a worker says it is doing (its process title shows the same word)."""

    BOOTING = "booting"  # loading its model
    CONNECTING = "connecting"  # model loaded, no broker connection (yet, or lost)
    IDLE = "idle"  # consuming, no job in hand
    BUSY = "busy"  # a job in hand
    DRAINING = "draining"  # stopped consuming, finishing the job in hand before exiting
    BOOT_FAILED = "boot_failed"  # cannot serve (model, credentials, queue arguments): about to exit

    @property
    def ready(self) -> bool:
        """Whether the model is loaded and the worker serves (or would, with a broker)."""
        return self in (WorkerState.CONNECTING, WorkerState.IDLE, WorkerState.BUSY, WorkerState.DRAINING)


class BrokerState(StrEnum):
    OK = "ok"
    UNREACHABLE = "unreachable"
    CONNECTING = "connecting"


@dataclass(frozen=True)
class JobReport:
    """The outcome of the worker's latest job; ``seq`` tells a new job from a repeated report."""

    seq: int
    status: str  # done, failed, or rejected (no task id: dead-lettered without a completion)
    code: str | None = None
    reused: bool = False  # answered from the stored result, not transcribed
    processing_s: float | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class QueueDepths:
    """Ready jobs and dead letters as one worker saw them at wall-clock time ``ts``."""

    jobs: int
    dead: int
    ts: float


@dataclass(frozen=True)
class WorkerReport:
    pid: int = 0
    slot: int = 0
    state: WorkerState = WorkerState.BOOTING
    broker: BrokerState = BrokerState.CONNECTING
    done: int = 0
    failed: int = 0
    task: str | None = None  # the job in hand
    since: float | None = None  # wall-clock start of that job
    deadline: float | None = None  # seconds it may take (grows once the audio's length is known)
    duration_s: float | None = None  # its audio's length
    device: str | None = None
    diarizer: bool = False  # whether it holds the diarizer (loaded on the first job that asks)
    error: str | None = None  # why it cannot start (with BOOT_FAILED)
    queue: QueueDepths | None = None
    job: JobReport | None = None
    ts: float = 0.0  # wall-clock time of sending

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> WorkerReport:
        """Parse a report; ValueError (or TypeError) on anything that is not one."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a report is a JSON object")
        data["state"] = WorkerState(data.get("state", WorkerState.BOOTING))
        data["broker"] = BrokerState(data.get("broker", BrokerState.CONNECTING))
        if data.get("queue") is not None:
            data["queue"] = QueueDepths(**data["queue"])
        if data.get("job") is not None:
            data["job"] = JobReport(**data["job"])
        return cls(**data)

    def elapsed_s(self, now_wall: float) -> float | None:
        """How long the job in hand has run, or None without one."""
        return now_wall - self.since if self.task and self.since else None

    def overran(self, now_wall: float) -> bool:
        """Whether the job in hand ran past its deadline."""
        elapsed = self.elapsed_s(now_wall)
        return (
            self.state is WorkerState.BUSY and bool(self.deadline) and elapsed is not None and elapsed > self.deadline
        )


@dataclass(frozen=True)
class WorkerSettings:
    """What the supervisor changes in a running worker on reload."""

    threads: int

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()


@dataclass
class Reporter:
    """The worker's end. Without a socket (e.g. in unit tests) it only remembers the last report."""

    sock: socket.socket | None
    current: WorkerReport = field(default_factory=WorkerReport)

    def __post_init__(self) -> None:
        if self.sock is not None:
            self.sock.setblocking(False)

    def send(self, **changes: Any) -> None:
        """Update the report (unknown field names raise TypeError) and send all of it."""
        self.current = dataclasses.replace(self.current, **changes, ts=time.time())
        if self.sock is None:
            return
        try:
            self.sock.send(self.current.to_json()[:MAX_REPORT])
        except (BlockingIOError, ConnectionRefusedError, BrokenPipeError):
            pass  # the supervisor is busy or gone; the next report will do

    def receive(self) -> list[WorkerSettings]:
        """Settings the supervisor sent since the last call (e.g. a new thread count)."""
        if self.sock is None:
            return []
        settings = []
        for raw in _drain(self.sock):
            try:
                settings.append(WorkerSettings(**json.loads(raw)))
            except (ValueError, TypeError):
                log.warning("ignoring settings the supervisor sent that this worker does not know: %r", raw[:200])
        return settings


def send_settings(sock: socket.socket, settings: WorkerSettings) -> None:
    """The supervisor's end: tell one worker its new settings."""
    try:
        sock.send(settings.to_json())
    except OSError:
        pass  # it is exiting; its successor starts with the new settings


def read_reports(sock: socket.socket) -> list[WorkerReport]:
    """Drain every pending report from the supervisor's end of one worker's socket."""
    reports = []
    for raw in _drain(sock):
        try:
            reports.append(WorkerReport.from_json(raw))
        except (ValueError, TypeError):
            continue  # truncated or from another version: the next one will do
    return reports


def _drain(sock: socket.socket) -> list[bytes]:
    datagrams = []
    while True:
        try:
            data = sock.recv(MAX_REPORT)
        except (BlockingIOError, ConnectionResetError):
            return datagrams
        if not data:
            return datagrams
        datagrams.append(data)
