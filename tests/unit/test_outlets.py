"""whisperd.outlets: a status client is answered at the end of the pass, from that pass's snapshot."""

from __future__ import annotations

import json
import socket

from whisperd.lifecycle import SupervisorState
from whisperd.metrics import NullMetrics
from whisperd.outlets import Outlets
from whisperd.snapshot import PoolSnapshot


def _snapshot(done: int) -> PoolSnapshot:
    return PoolSnapshot(
        state=SupervisorState.RUNNING, config=None, job_queue="jobs", workers_wanted=1, workers=(),
        jobs_done=done, jobs_failed=0, restarts=0,
    )  # fmt: skip


def test_a_waiting_client_gets_the_snapshot_of_its_pass_and_the_socket_goes_away(tmp_path):
    path = str(tmp_path / "control.sock")
    outlets = Outlets(path)
    outlets.open("")  # no metrics.listen: the no-op metrics
    assert isinstance(outlets.metrics, NullMetrics) and len(outlets.fds()) == 1
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with client:
        client.connect(path)
        outlets.publish(_snapshot(1))  # not marked waiting yet: nobody answered
        outlets.woke(set(outlets.fds()))
        outlets.publish(_snapshot(2))
        client.settimeout(5)
        answer = json.loads(client.makefile().readline())
    assert (answer["jobs_done"], answer["socket"], answer["state"]) == (2, path, "running")
    outlets.close()
    assert outlets.fds() == [] and not (tmp_path / "control.sock").exists()


def test_nothing_is_polled_or_answered_before_open(tmp_path):
    outlets = Outlets(str(tmp_path / "control.sock"))
    assert outlets.fds() == []
    outlets.woke({0, 1, 2})
    outlets.publish(_snapshot(0))
    outlets.close_in_child()
    outlets.close()
