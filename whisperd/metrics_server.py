"""The /metrics endpoint: an HTTP server whose cost no client can push past a fixed bound.

prometheus_client's own server starts a thread per connection and never times one out, so a
thousand idle connections cost the supervisor a thousand threads and file descriptors, enough
to make its own bookkeeping fail ("Too many open files"). Here at most ``MAX_CONNECTIONS`` are
served at once (more are closed as soon as they are accepted), every read times out after
``READ_TIMEOUT_S``, and a reaper thread cuts any connection older than ``DEADLINE_S``, so one
trickling a byte at a time cannot hold a slot either. A scraper asks about once every 15 s and
is answered in milliseconds: these bounds never touch it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("whisperd.supervisor")

MAX_CONNECTIONS = 8
READ_TIMEOUT_S = 5.0
DEADLINE_S = 10.0
REFUSAL_LOG_EVERY_S = 60.0


class _Handler(BaseHTTPRequestHandler):
    server: MetricsHTTPServer
    timeout = READ_TIMEOUT_S  # StreamRequestHandler sets it on the socket
    protocol_version = "HTTP/1.0"  # one request per connection: nothing to keep alive

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass  # a scrape every 15 s is not worth a log line


class MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], registry: Any) -> None:
        self.registry = registry
        self.active: dict[socket.socket, float] = {}  # connection -> when it was accepted (monotonic)
        self.lock = threading.Lock()
        self.refused = 0
        self._refusal_logged = 0.0
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            full = len(self.active) >= MAX_CONNECTIONS
            if not full:
                self.active[request] = time.monotonic()
        if full:
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.active.pop(request, None)
        super().shutdown_request(request)

    def _refuse(self, request: socket.socket) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= REFUSAL_LOG_EVERY_S:
            self._refusal_logged = now
            log.warning(
                "metrics: %d connections open at once, the most served; closing new ones (%d so far)",
                MAX_CONNECTIONS, self.refused,
            )  # fmt: skip
        try:
            request.close()
        except OSError:
            pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: a client failed", exc_info=True)

    def reap(self) -> None:
        """Cut every connection older than DEADLINE_S: its handler's read fails and it ends."""
        cutoff = time.monotonic() - DEADLINE_S
        with self.lock:
            old = [s for s, since in self.active.items() if since < cutoff]
        for s in old:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(host: str, port: int, registry: Any) -> MetricsHTTPServer:
    """Listen and serve in background threads (raises OSError when the address cannot be bound)."""
    server = MetricsHTTPServer((host, port), registry)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()

    def reaper() -> None:
        while server.socket.fileno() >= 0:
            time.sleep(1.0)
            server.reap()

    threading.Thread(target=reaper, name="metrics-reaper", daemon=True).start()
    return server
