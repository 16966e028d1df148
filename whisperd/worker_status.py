"""What a worker shows of itself: the report the supervisor reads, and the process title ps shows.

Both threads change the report (the job thread when a job starts or ends, the I/O thread every
second), so each change goes through one lock and neither thread loses the other's. The title
follows the report's state and task (``whisperd: worker N [booting|idle|busy TASK|draining|connecting]``:
tests and operators read it), and only the main thread sets it, in ``show_title``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from whisperd.reporting import Reporter, WorkerReport, WorkerSettings, WorkerState


def title_of(slot: int, report: WorkerReport) -> str | None:
    """The process title for ``report``; None keeps the title there is (a worker that cannot boot
    says why in its report and exits)."""
    if report.state is WorkerState.BOOT_FAILED:
        return None
    if report.state is WorkerState.BUSY:
        return f"whisperd: worker {slot} [busy {report.task or '?'}]"
    return f"whisperd: worker {slot} [{report.state.value}]"


class WorkerStatus:
    """The worker's report, changed from either thread, and its title, set from the main thread."""

    def __init__(self, reporter: Reporter, slot: int, set_title: Callable[[str], None]) -> None:
        self._reporter = reporter
        self._slot = slot
        self._set_title = set_title
        self._lock = threading.Lock()
        self._title: str | None = None  # what the report asks for
        self._shown: str | None = None  # what the process shows

    @property
    def current(self) -> WorkerReport:
        return self._reporter.current

    def send(self, **changes: Any) -> None:
        """Change the report and send all of it to the supervisor (also its heartbeat)."""
        with self._lock:
            self._reporter.send(**changes)
            self._title = title_of(self._slot, self._reporter.current) or self._title

    def receive(self) -> list[WorkerSettings]:
        """Main thread: settings the supervisor sent since the last call."""
        return self._reporter.receive()

    def show_title(self) -> None:
        """Main thread: set the title the report asks for, if it is not the one shown."""
        with self._lock:
            title = self._title
        if title is not None and title != self._shown:
            self._set_title(title)
            self._shown = title
