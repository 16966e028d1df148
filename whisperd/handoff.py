"""Work the job thread hands to the I/O thread, each piece settled exactly once.

pika lets another thread queue a callback on a connection (``add_callback_threadsafe``), but a
callback queued just before that connection is lost is never run: its I/O loop raises first. A
worker that waits for such a callback to ack a job would count the job in flight forever and
report itself busy. Here every handoff is remembered until it runs; when the connection goes,
the I/O thread abandons what is left, and each abandoned handoff runs its fallback instead (the
broker requeues the job it was for, and the stored result answers the redelivery).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import pika.exceptions


class _Handoff:
    __slots__ = ("callback", "if_lost")

    def __init__(self, callback: Callable[[], None], if_lost: Callable[[], None] | None) -> None:
        self.callback = callback
        self.if_lost = if_lost


class Handoffs:
    """Callbacks waiting for the I/O thread; each one ends as exactly one of callback or fallback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: set[_Handoff] = set()

    def call(self, connection: Any, callback: Callable[[], None], if_lost: Callable[[], None] | None = None) -> None:
        """Run ``callback`` in ``connection``'s I/O thread; if that connection is gone, or goes before
        its loop gets there, run ``if_lost`` (here, or in the thread that abandons the rest)."""
        handoff = _Handoff(callback, if_lost)
        with self._lock:
            self._waiting.add(handoff)
        try:
            if connection is None:
                raise pika.exceptions.ConnectionWrongStateError("no connection")
            connection.add_callback_threadsafe(functools.partial(self._run, handoff))
        except pika.exceptions.ConnectionWrongStateError:
            self._abandon(handoff)

    def abandon_all(self) -> int:
        """The connection is gone: run the fallback of every handoff it never ran; how many there were."""
        with self._lock:
            left, self._waiting = self._waiting, set()
        for handoff in left:
            if handoff.if_lost is not None:
                handoff.if_lost()
        return len(left)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def _claim(self, handoff: _Handoff) -> bool:
        with self._lock:
            if handoff not in self._waiting:
                return False
            self._waiting.discard(handoff)
            return True

    def _run(self, handoff: _Handoff) -> None:
        if self._claim(handoff):
            handoff.callback()

    def _abandon(self, handoff: _Handoff) -> None:
        if self._claim(handoff) and handoff.if_lost is not None:
            handoff.if_lost()
