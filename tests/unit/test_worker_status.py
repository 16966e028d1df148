"""whisperd.worker_status: the report and the process title, kept in step."""

from __future__ import annotations

import threading

from whisperd.reporting import Reporter, WorkerState
from whisperd.worker_status import WorkerStatus, title_of


def test_the_title_follows_the_state_in_the_words_tests_and_operators_read() -> None:
    status = WorkerStatus(Reporter(None), 3, lambda title: None)
    expected = {
        WorkerState.BOOTING: "whisperd: worker 3 [booting]",
        WorkerState.CONNECTING: "whisperd: worker 3 [connecting]",
        WorkerState.IDLE: "whisperd: worker 3 [idle]",
        WorkerState.DRAINING: "whisperd: worker 3 [draining]",
    }
    for state, title in expected.items():
        status.send(state=state)
        assert title_of(3, status.current) == title
    status.send(state=WorkerState.BUSY, task="t-9")
    assert title_of(3, status.current) == "whisperd: worker 3 [busy t-9]"
    status.send(task=None)
    assert title_of(3, status.current) == "whisperd: worker 3 [busy ?]"


def test_the_title_is_set_only_by_show_title_and_only_when_it_changes() -> None:
    """The job thread changes the report; the main thread sets the title (setproctitle renames the
    thread that calls it), once per change. A failed boot keeps the title it had."""
    shown: list[str] = []
    status = WorkerStatus(Reporter(None), 1, shown.append)
    status.send(state=WorkerState.BOOTING)
    assert shown == []
    status.show_title()
    status.show_title()
    status.send(done=1)
    status.show_title()
    status.send(state=WorkerState.BOOT_FAILED, error="cannot load model")
    status.show_title()
    assert shown == ["whisperd: worker 1 [booting]"]


def test_changes_from_two_threads_are_all_kept() -> None:
    """Each change goes through one lock: a thread's change is never lost to the other's."""
    status = WorkerStatus(Reporter(None), 1, lambda title: None)

    def change(field: str) -> None:
        for i in range(1, 2001):
            status.send(**{field: i})

    threads = [threading.Thread(target=change, args=(f,)) for f in ("done", "failed")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (status.current.done, status.current.failed) == (2000, 2000)
