"""Where each loop pass's snapshot goes besides systemd: Prometheus and ``whisperd status``.

The loop's poll() waits on the status socket beside the workers' sockets; a client that connects
is answered at the end of that pass, from the pass's snapshot, so no answer shows a pool halfway
through a pass. The metrics get every snapshot, and every report and exit as it happens.
"""

from __future__ import annotations

from whisperd import control, metrics
from whisperd.snapshot import PoolSnapshot


class Outlets:
    """The status socket and the metrics server, opened and closed together."""

    def __init__(self, control_path: str) -> None:
        self.control = control.ControlServer(control_path)
        self.metrics: metrics.NullMetrics | metrics.Metrics = metrics.NullMetrics()
        self._control_waiting = False

    def open(self, metrics_listen: str) -> None:
        """Start the metrics server (MetricsError when it cannot), then the status socket."""
        self.metrics = metrics.start(metrics_listen)
        self.control.open()

    def fds(self) -> list[int]:
        """What the loop's poll() waits on for these: the status socket, when it is open."""
        return [self.control.sock.fileno()] if self.control.sock is not None else []

    def woke(self, ready: set[int]) -> None:
        """Note a status client waiting among the descriptors poll() found ``ready``."""
        if self.control.sock is not None and self.control.sock.fileno() in ready:
            self._control_waiting = True  # answered at the end of this pass, from its snapshot

    def publish(self, snap: PoolSnapshot) -> None:
        """The pass's snapshot to the metrics and to any waiting ``whisperd status``."""
        self.metrics.update(snap)
        if self._control_waiting:
            self._control_waiting = False
            self.control.serve(lambda: control.status_document(snap, self.control.path))

    def close_in_child(self) -> None:
        """In a forked worker: drop the descriptors, leave the files to the supervisor."""
        self.control.close_in_child()
        self.metrics.close_in_child()

    def close(self) -> None:
        self.control.close()
        self.metrics.close()
