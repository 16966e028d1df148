"""Connection limits: uvicorn accepts without limit and waits forever for a request head; here the
open connections are bounded below the descriptor limit and idle ones are closed."""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("whisperd.api")

FD_RESERVE = 128  # descriptors kept for the broker, the store, uploads and logs
# asyncio accepts up to ``backlog`` connections in one go before the guard sees any of them, and
# the ones the guard pushes out close a loop iteration later: under a flood about two batches are
# open on top of the limit (measured: 384 + 253 fds with a backlog of 128), so three are kept free.
BACKLOG = 128
IN_FLIGHT_BATCHES = 3
FDS_PER_CONNECTION = 2  # its socket, and a result file it may be reading
MIN_CONNECTIONS, MAX_CONNECTIONS = 16, 1024
WANTED_FDS = 65536  # the soft RLIMIT_NOFILE is raised towards the hard one, up to this
SWEEP_S = 1.0


def connection_limit() -> int:
    """How many connections fit in this process's descriptors, with FD_RESERVE left over.

    The soft RLIMIT_NOFILE is raised to the hard one first (systemd's default soft limit is 1024).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_FDS if hard == resource.RLIM_INFINITY else min(hard, WANTED_FDS)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (OSError, ValueError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = WANTED_FDS
    free = soft - FD_RESERVE - IN_FLIGHT_BATCHES * BACKLOG
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, free // FDS_PER_CONNECTION))


class ConnectionGuard:
    """The server's open connections, bounded below its descriptor limit.

    uvicorn accepts every connection and waits for its request head forever: 1100 connections
    that sent nothing used up a 1024-descriptor API (accept() then failed in a loop, /healthz
    timed out). Here a connection that has no request in progress is closed once it has sent no
    complete request head for ``head_timeout_s``, and at ``limit`` a new connection pushes out an idle
    one of the client address that holds the most, so one client's flood cannot lock out others.
    A connection with a request in progress is left to the request's own bounds.
    """

    def __init__(self, limit: int, head_timeout_s: float) -> None:
        self.limit = limit
        self.head_timeout_s = head_timeout_s
        self.idle_since: dict[GuardedH11Protocol, float | None] = {}  # None: a request in progress
        self.by_client: Counter[str] = Counter()
        self._sweeping = False

    def opened(self, conn: GuardedH11Protocol) -> None:
        if len(self.idle_since) >= self.limit:
            victim = self._victim()
            if victim is None:  # every connection has a request in progress: this one waits for none
                log.warning("%d connections, all busy: refusing one from %s", len(self.idle_since), conn.host)
                conn.transport.abort()
                return
            log.warning("%d connections open (the limit): closing an idle one from %s", self.limit, victim.host)
            self.drop(victim)
            victim.transport.abort()
        self.idle_since[conn] = time.monotonic()
        self.by_client[conn.host] += 1
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def drop(self, conn: GuardedH11Protocol) -> None:
        if conn in self.idle_since:
            del self.idle_since[conn]
            self.by_client[conn.host] -= 1
            if not self.by_client[conn.host]:
                del self.by_client[conn.host]

    def busy(self, conn: GuardedH11Protocol, busy: bool) -> None:
        if conn in self.idle_since and (self.idle_since[conn] is None) != busy:
            self.idle_since[conn] = None if busy else time.monotonic()

    def _victim(self) -> GuardedH11Protocol | None:
        idle = [(self.by_client[c.host], -since, c) for c, since in self.idle_since.items() if since is not None]
        return max(idle, key=lambda t: t[:2])[2] if idle else None

    def _sweep(self) -> None:
        """Close the connections idle past the head timeout (abort those still closing after twice that)."""
        now = time.monotonic()
        for conn, since in list(self.idle_since.items()):
            if since is None or now - since < self.head_timeout_s:
                continue
            if conn.transport.is_closing():
                if now - since >= 2 * self.head_timeout_s:  # a client that does not read what is left
                    self.drop(conn)
                    conn.transport.abort()
            else:
                conn.transport.close()
        asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, telling its ConnectionGuard when a connection opens, works and ends."""

    guard: ConnectionGuard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.host = self.client[0] if self.client else ""
        self.guard.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.drop(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.guard.busy(self, self._in_request())

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.guard.busy(self, self._in_request())

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})
