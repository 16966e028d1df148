"""Prometheus metrics, served by the supervisor when ``metrics.listen`` is set.

The supervisor has no torch and already hears every worker's reports, so it is the one place
that sees the whole pool: job outcomes come in as worker reports, memory and queue depths are
copied into gauges once a second by the main loop. ``metrics_server`` serves them from threads
of its own, a bounded number; the main loop only ever sets values, so a slow scraper (or a
thousand idle connections) cannot stall supervision.
"""

from __future__ import annotations

import logging
import time

from whisperd import metrics_server
from whisperd.config import split_listen
from whisperd.reporting import BrokerState, WorkerReport, WorkerState
from whisperd.snapshot import PoolSnapshot

log = logging.getLogger("whisperd.supervisor")

DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 5)
STATES = tuple(s.value for s in WorkerState if s is not WorkerState.BOOT_FAILED)  # always exported, 0 or not


class MetricsError(RuntimeError):
    """Metrics were asked for but cannot be served (package missing, address in use)."""


class NullMetrics:
    """metrics.listen is empty: every hook is a no-op, so the supervisor calls them unconditionally."""

    def on_report(self, pid: int, report: WorkerReport) -> None:
        pass

    def worker_exited(self, pid: int, slot: int, restart: str | None) -> None:
        pass

    def update(self, snap: PoolSnapshot) -> None:
        pass

    def close_in_child(self) -> None:
        pass

    def close(self) -> None:
        pass


def start(listen: str) -> NullMetrics | Metrics:
    return Metrics(listen) if listen else NullMetrics()


class Metrics:
    def __init__(self, listen: str) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise MetricsError(
                "metrics.listen is set but prometheus_client is not installed (pip install 'whisperd[metrics]')"
            ) from None
        r = self.registry = CollectorRegistry()
        self.jobs = Counter("whisperd_jobs", "Jobs finished, by status and error code", ["status", "code"], registry=r)
        self.duration = Histogram(
            "whisperd_job_duration_seconds",
            "Time from taking a job to its result",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.audio = Counter("whisperd_audio_seconds", "Seconds of audio transcribed", registry=r)
        self.rtf = Histogram(
            "whisperd_job_real_time_factor", "Processing time / audio length", buckets=RTF_BUCKETS, registry=r
        )
        self.restarts = Counter("whisperd_worker_restarts", "Workers replaced, by reason", ["reason"], registry=r)
        self.queue_depth = Gauge("whisperd_queue_depth", "Jobs waiting in the job queue", registry=r)
        self.dead_depth = Gauge("whisperd_dead_letter_depth", "Messages in the dead-letter queue", registry=r)
        self.broker_up = Gauge("whisperd_broker_connected", "1 when a worker is connected to the broker", registry=r)
        self.workers = Gauge("whisperd_workers", "Worker processes by state", ["state"], registry=r)
        self.rss = Gauge("whisperd_worker_rss_bytes", "Resident memory of each worker", ["slot"], registry=r)
        self.gpu = Gauge("whisperd_worker_gpu_memory_bytes", "GPU memory of each worker", ["slot"], registry=r)
        self.diarizer = Gauge("whisperd_worker_diarizer_loaded", "1 when the worker holds the diarizer", ["slot"],
                              registry=r)  # fmt: skip
        self._seen: dict[int, int] = {}
        self._last_update = 0.0
        host, port = split_listen(listen)
        try:
            self.server = metrics_server.serve(host, port, r)
        except OSError as e:
            raise MetricsError(f"metrics.listen = {listen!r}: cannot listen: {e}") from None
        log.info("metrics: http://%s:%d/metrics", host, self.server.server_port)

    def on_report(self, pid: int, report: WorkerReport) -> None:
        """Count a finished job once: reports repeat the last one, ``seq`` tells them apart."""
        job = report.job
        if job is None or job.seq <= self._seen.get(pid, 0):
            return
        self._seen[pid] = job.seq
        self.jobs.labels(job.status or "unknown", job.code or "").inc()
        if job.reused or job.status != "done":
            return  # answered from disk: no transcription to time
        if job.processing_s is not None:
            self.duration.observe(job.processing_s)
        if job.duration_s:
            self.audio.inc(job.duration_s)
            if job.processing_s is not None:
                self.rtf.observe(job.processing_s / job.duration_s)

    def worker_exited(self, pid: int, slot: int, restart: str | None) -> None:
        """Forget an exited worker; ``restart`` is the reason it is replaced (None: retired, or a stop)."""
        self._seen.pop(pid, None)
        for gauge in (self.rss, self.gpu, self.diarizer):
            try:
                gauge.remove(str(slot))
            except KeyError:
                pass
        if restart:
            self.restarts.labels(restart).inc()

    def update(self, snap: PoolSnapshot) -> None:
        """Copy the loop's snapshot into gauges, at most once a second."""
        now = time.monotonic()
        if now - self._last_update < 1.0:
            return
        self._last_update = now
        depth = snap.depths
        if depth:
            self.queue_depth.set(depth.jobs)
            self.dead_depth.set(depth.dead)
        self.broker_up.set(1 if snap.broker is BrokerState.OK else 0)
        counts = dict.fromkeys(STATES, 0)
        for w in snap.workers:
            counts[w.report.state.value] = counts.get(w.report.state.value, 0) + 1
        for state, n in counts.items():
            self.workers.labels(state).set(n)
        for w in snap.workers:
            if w.rss_mb:
                self.rss.labels(str(w.slot)).set(w.rss_mb * 2**20)
            if w.gpu_mb is not None:
                self.gpu.labels(str(w.slot)).set(w.gpu_mb * 2**20)
            self.diarizer.labels(str(w.slot)).set(1 if w.report.diarizer else 0)

    def close_in_child(self) -> None:
        """In a forked worker: drop the sockets (the serving threads were not forked)."""
        self.server.socket.close()
        for conn in list(self.server.active):
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
