"""Log throttling: a flood of hostile requests or messages must not flood the journal."""

from __future__ import annotations

import logging
import threading
import time

# Log lines of one kind (logger and message) let through per interval; the rest are counted.
LOG_BURST, LOG_INTERVAL_S = 20, 10.0


class LogThrottle(logging.Filter):
    """At most LOG_BURST records of one kind (logger and message) per LOG_INTERVAL_S; the next one
    after that says how many were left out. A flood of hostile requests or messages must not
    flood the journal (accept() failing on EMFILE once wrote 124 000 tracebacks in 17 s).
    """

    def __init__(self, burst: int = LOG_BURST, interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self.burst = burst
        self.interval_s = interval_s
        self._windows: dict[tuple[str, str], list[float]] = {}  # kind -> [start, records]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        kind, now = (record.name, str(record.msg)), time.monotonic()
        with self._lock:
            window = self._windows.get(kind)
            if window is not None and now - window[0] < self.interval_s:
                window[1] += 1
                return window[1] <= self.burst
            left_out = int(window[1]) - self.burst if window is not None else 0
            if len(self._windows) > 10_000:  # many kinds: forget the old windows
                self._windows.clear()
            self._windows[kind] = [now, 1]
        if left_out > 0:
            record.msg = f"{record.msg} [{left_out} more like this were not logged]"
        return True


def install_log_throttle() -> None:
    throttle = LogThrottle()
    for name in ("uvicorn.error", "asyncio", "whisperd.api"):
        logging.getLogger(name).addFilter(throttle)
