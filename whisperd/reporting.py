"""Worker -> supervisor reports over a datagram socketpair.

A worker sends a small JSON report each second from its I/O loop and at every state change.
The supervisor treats the reports as the worker's heartbeat (a worker whose loop is stuck stops
reporting and gets replaced) and builds STATUS and ``whisperd status`` from them.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

MAX_REPORT = 8192


class Reporter:
    """The worker's end. Without a socket (e.g. in unit tests) it only remembers the last report."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.fields: dict[str, Any] = {}
        if sock is not None:
            sock.setblocking(False)

    def send(self, **fields: Any) -> None:
        self.fields.update(fields)
        if self.sock is None:
            return
        payload = json.dumps({**self.fields, "ts": time.time()}).encode()[:MAX_REPORT]
        try:
            self.sock.send(payload)
        except (BlockingIOError, ConnectionRefusedError, BrokenPipeError):
            pass  # the supervisor is busy or gone; the next report will do

    def receive(self) -> list[dict[str, Any]]:
        """Settings the supervisor sent since the last call (e.g. a new thread count)."""
        return read_reports(self.sock) if self.sock is not None else []


def read_reports(sock: socket.socket) -> list[dict[str, Any]]:
    """Drain every pending report from the supervisor's end of one worker's socket."""
    reports = []
    while True:
        try:
            data = sock.recv(MAX_REPORT)
        except (BlockingIOError, ConnectionResetError):
            return reports
        if not data:
            return reports
        try:
            reports.append(json.loads(data))
        except ValueError:
            continue
