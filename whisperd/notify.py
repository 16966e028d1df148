"""systemd notifications (sd_notify) from the supervisor; a no-op without NOTIFY_SOCKET.

Only the supervisor talks to systemd (``NotifyAccess=main``); workers close this socket and drop
``NOTIFY_SOCKET`` right after the fork.
"""

from __future__ import annotations

import os
import time

import sdnotify

NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None
        self._status = ""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        on = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if on else 0.0
        self._last_watchdog = 0.0

    def send(self, *lines: str) -> None:
        if self._sd is not None:
            self._sd.notify("\n".join(lines))

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self, drain_s: float) -> None:
        self.send("STOPPING=1", f"EXTEND_TIMEOUT_USEC={int(drain_s * 1e6)}")

    def status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self.send(f"STATUS={text}")

    def watchdog(self, healthy: bool) -> None:
        """Ping at half the WatchdogSec interval, and only while the caller says all is well."""
        now = time.monotonic()
        if healthy and self.watchdog_interval and now - self._last_watchdog >= self.watchdog_interval:
            self._last_watchdog = now
            self.send("WATCHDOG=1")

    def close_in_child(self) -> None:
        """In a freshly forked worker: let go of the socket and the variables that name it."""
        if self._sd is not None and self._sd.socket is not None:
            self._sd.socket.close()
        self._sd = None
        self.enabled = False
        for name in NOTIFY_ENV:
            os.environ.pop(name, None)
