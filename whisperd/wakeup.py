"""Where the supervisor's loop sleeps: signals queued by their handlers, and one poll() that wakes.

As in gunicorn's arbiter, a signal handler only queues the signal; ``signal.set_wakeup_fd`` writes
to a self-pipe, so the poll() the loop sleeps in returns at once and the loop handles the signal
outside the handler. The same poll() waits on the workers' report sockets and the status socket.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Iterable
from typing import Any

MAX_QUEUED = 10  # more signals than this before the loop runs are dropped


class Wakeup:
    """The queue of received signals and the self-pipe that interrupts the loop's sleep."""

    def __init__(self, signals: Iterable[int]) -> None:
        self.signals = tuple(signals)
        self.queue: list[int] = []
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self) -> None:
        """Queue ``signals`` from now on, each waking the loop."""
        for sig in self.signals:
            signal.signal(sig, self._queue)
        signal.set_wakeup_fd(self._w)

    def _queue(self, signum: int, frame: Any) -> None:
        if len(self.queue) < MAX_QUEUED:
            self.queue.append(signum)

    def pop(self) -> int | None:
        """The oldest queued signal, or None."""
        return self.queue.pop(0) if self.queue else None

    def wait(self, fds: Iterable[Any], timeout_s: float = 1.0) -> set[int]:
        """Wait up to ``timeout_s`` for a signal or for one of ``fds`` (descriptors or sockets) to be
        readable; the descriptors that are. At once when a signal is queued already.

        poll(), not select(): select() cannot take a descriptor above 1023, which a worker's
        socket gets as soon as something else in the process holds many.
        """
        if self.queue:
            return set()
        poller = select.poll()
        poller.register(self._r, select.POLLIN)
        for fd in fds:
            poller.register(fd, select.POLLIN)
        try:
            ready = {fd for fd, _ in poller.poll(int(timeout_s * 1000))}
        except InterruptedError:
            return set()
        if self._r in ready:
            ready.discard(self._r)
            try:
                while os.read(self._r, 4096):
                    pass
            except BlockingIOError:
                pass
        return ready

    def close_in_child(self) -> None:
        """In a forked worker: default signal handling again, and the pipe closed."""
        signal.set_wakeup_fd(-1)
        for sig in self.signals:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self._r)
        os.close(self._w)
