"""Unit tests of whisperd.snapshot: the STATUS line and the pool-wide facts read from one snapshot."""

from __future__ import annotations

from whisperd.lifecycle import ExitReason, Phase
from whisperd.reporting import BrokerState, QueueDepths, WorkerReport, WorkerState
from whisperd.snapshot import PoolSnapshot, WorkerView


def view(slot, state=WorkerState.IDLE, broker=BrokerState.OK, ready=True, counted=True, phase=Phase.RUNNING, **kw):
    report = WorkerReport(pid=100 + slot, slot=slot, state=state, broker=broker, **kw)
    reason = ExitReason.SCALED_DOWN if phase is Phase.STOPPING else None
    return WorkerView(slot, 100 + slot, phase, counted, ready, reason, report, 10.0, None, None)


def snap(*workers, done=7, failed=2) -> PoolSnapshot:
    return PoolSnapshot("running", "/etc/whisperd/whisperd.toml", "q", 3, tuple(workers), done, failed, 0)


def test_status_line_counts_busy_starting_and_reconnecting_workers():
    s = snap(
        view(1, WorkerState.BUSY),
        view(2, WorkerState.CONNECTING, BrokerState.UNREACHABLE),
        view(3, WorkerState.BOOTING, BrokerState.CONNECTING, ready=False),
        view(4, WorkerState.BUSY, counted=False, phase=Phase.STOPPING),  # retired: not in the line
    )
    assert s.status_text() == "1/3 busy, 7 done, 2 failed, broker ok (1 reconnecting), 1 starting"
    assert [w.state for w in s.workers] == ["busy", "connecting", "booting", "busy (retiring)"]


def test_broker_state_is_that_of_the_best_connected_ready_worker():
    assert snap(view(1, broker=BrokerState.UNREACHABLE), view(2)).broker is BrokerState.OK
    assert snap(view(1, broker=BrokerState.UNREACHABLE)).broker is BrokerState.UNREACHABLE
    starting = view(1, WorkerState.BOOTING, BrokerState.OK, ready=False)
    assert snap(starting).broker is BrokerState.CONNECTING, "a worker still loading does not count"


def test_the_freshest_queue_depths_win():
    old, new = QueueDepths(5, 0, 100.0), QueueDepths(2, 1, 200.0)
    assert snap(view(1, queue=new), view(2, queue=old), view(3)).depths == new
    assert snap(view(1)).depths is None
