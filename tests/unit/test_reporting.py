"""Unit tests of whisperd.reporting: the typed worker report over a real socketpair."""

from __future__ import annotations

import socket

import pytest

from whisperd.reporting import (
    BrokerState,
    JobReport,
    QueueDepths,
    Reporter,
    WorkerReport,
    WorkerSettings,
    WorkerState,
    read_reports,
    send_settings,
)


@pytest.fixture
def pair():
    supervisor_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    supervisor_end.setblocking(False)
    yield supervisor_end, worker_end
    supervisor_end.close()
    worker_end.close()


def test_each_report_is_whole_and_typed_on_arrival(pair):
    supervisor_end, worker_end = pair
    reporter = Reporter(worker_end)
    reporter.send(pid=42, slot=2, state=WorkerState.BOOTING)
    reporter.send(state=WorkerState.BUSY, task="t-1", since=1.0e9, deadline=300.0)
    reporter.send(job=JobReport(1, "done", None, False, 2.5, 11.0), queue=QueueDepths(jobs=3, dead=1, ts=1.0e9))
    first, second, third = read_reports(supervisor_end)
    assert (first.pid, first.slot, first.state, first.task) == (42, 2, WorkerState.BOOTING, None)
    assert (second.pid, second.state, second.task, second.deadline) == (42, WorkerState.BUSY, "t-1", 300.0)
    assert third.job == JobReport(1, "done", None, False, 2.5, 11.0)
    assert third.queue == QueueDepths(3, 1, 1.0e9)
    assert third.broker is BrokerState.CONNECTING and third.ts > 0
    assert read_reports(supervisor_end) == []


def test_a_misspelt_field_fails_at_the_sender():
    with pytest.raises(TypeError):
        Reporter(None).send(stat="idle")


def test_a_datagram_that_is_not_a_report_is_skipped(pair):
    supervisor_end, worker_end = pair
    worker_end.send(b'{"state": "idle", "pid": 1')  # cut off at MAX_REPORT
    worker_end.send(b'{"state": "dancing"}')
    worker_end.send(WorkerReport(pid=7, state=WorkerState.IDLE).to_json())
    assert [r.pid for r in read_reports(supervisor_end)] == [7]


def test_ready_states_and_overrun():
    assert [s for s in WorkerState if s.ready] == [
        WorkerState.CONNECTING, WorkerState.IDLE, WorkerState.BUSY, WorkerState.DRAINING,
    ]  # fmt: skip
    busy = WorkerReport(state=WorkerState.BUSY, task="t", since=1000.0, deadline=60.0)
    assert busy.elapsed_s(1030.0) == 30.0
    assert (busy.overran(1060.0), busy.overran(1061.0)) == (False, True)
    assert WorkerReport(state=WorkerState.IDLE).elapsed_s(1030.0) is None


def test_settings_go_the_other_way(pair):
    supervisor_end, worker_end = pair
    reporter = Reporter(worker_end)
    send_settings(supervisor_end, WorkerSettings(threads=3))
    supervisor_end.send(b'{"colour": "blue"}')
    assert reporter.receive() == [WorkerSettings(threads=3)]
    assert reporter.receive() == []
