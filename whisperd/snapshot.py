"""One picture of the pool, taken once per pass of the supervisor's loop.

systemd's STATUS line, ``whisperd status`` and the Prometheus gauges all read the same snapshot,
so they agree with each other and the GPU is asked about its processes once per pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from whisperd.lifecycle import ExitReason, Phase, SupervisorState
from whisperd.pool import WorkerProc
from whisperd.reporting import BrokerState, QueueDepths, WorkerReport, WorkerState


@dataclass(frozen=True)
class WorkerView:
    slot: int
    pid: int
    phase: Phase
    counted: bool  # towards workers.count (not retired)
    ready: bool
    exit_reason: ExitReason | None  # why it is on its way out, as decided
    report: WorkerReport
    uptime_s: float
    rss_mb: float | None  # None until measured
    gpu_mb: int | None  # None without a GPU (unknown, not 0)

    @property
    def state(self) -> str:
        """The worker's own state, marked when the supervisor asked it to exit."""
        state = self.report.state.value
        return f"{state} (retiring)" if self.phase is Phase.STOPPING else state


@dataclass(frozen=True)
class PoolSnapshot:
    state: SupervisorState
    config: str | None  # the daemon's config file, as an absolute path
    job_queue: str
    workers_wanted: int
    workers: tuple[WorkerView, ...]
    jobs_done: int  # since start, by live and exited workers
    jobs_failed: int
    restarts: int

    @property
    def counted(self) -> list[WorkerView]:
        return [w for w in self.workers if w.counted]

    @property
    def broker(self) -> BrokerState:
        """ok when any ready worker is connected, else unreachable when one said so, else connecting."""
        states = {w.report.broker for w in self.workers if w.ready}
        for state in (BrokerState.OK, BrokerState.UNREACHABLE):
            if state in states:
                return state
        return BrokerState.CONNECTING

    @property
    def depths(self) -> QueueDepths | None:
        """The freshest queue depths any worker reported."""
        fresh = [w.report.queue for w in self.workers if w.report.queue is not None]
        return max(fresh, key=lambda q: q.ts) if fresh else None

    def status_text(self) -> str:
        """systemd's STATUS= line."""
        live = self.counted
        busy = sum(1 for w in live if w.report.state is WorkerState.BUSY)
        ready = sum(1 for w in live if w.ready)
        text = f"{busy}/{len(live)} busy, {self.jobs_done} done, {self.jobs_failed} failed, broker {self.broker}"
        lost = sum(1 for w in live if w.ready and w.report.broker is BrokerState.UNREACHABLE)
        if self.broker is BrokerState.OK and lost:  # some workers lost their node (e.g. in a cluster)
            text += f" ({lost} reconnecting)"
        if ready < len(live):
            text += f", {len(live) - ready} starting"
        return text


def view(w: WorkerProc, now: float, gpu_mb: dict[int, int] | None) -> WorkerView:
    return WorkerView(
        slot=w.slot,
        pid=w.pid,
        phase=w.phase,
        counted=w.counted,
        ready=w.ready,
        exit_reason=w.exit_reason,
        report=w.report,
        uptime_s=now - w.started,
        rss_mb=w.rss_mb or None,
        gpu_mb=None if gpu_mb is None else gpu_mb.get(w.pid),
    )
