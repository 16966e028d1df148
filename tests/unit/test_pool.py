"""Unit tests of whisperd.pool: every supervision policy, on a fake clock, in milliseconds."""

from __future__ import annotations

import dataclasses
import signal

import pytest

from whisperd import config
from whisperd.lifecycle import ExitReason, Phase, WorkerExit
from whisperd.pool import (
    CRASH_BACKOFF,
    GPU_WAIT_S,
    Kill,
    Retire,
    Slot,
    Spawn,
    WaitForGpu,
    WorkerProc,
    all_ready,
    check_memory,
    exit_code_of,
    find_stuck,
    heartbeats_ok,
    judge_exit,
    old_generation_left,
    plan_reload,
    roll_back,
    roll_back_on_give_up,
    scale,
)
from whisperd.reporting import WorkerReport, WorkerState

EXIT_0, EXIT_1, EXIT_3, EXIT_5 = (code << 8 for code in WorkerExit)  # wait statuses
KILLED_9 = signal.SIGKILL


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def cfg(**workers) -> config.Config:
    """A config as the supervisor holds it: ``workers.count`` a number (layout.resolve works out "auto")."""
    return config.parse({"workers": {"count": 1, **workers}})


def worker(pid=100, slot=1, generation=0, started=1000.0, ready=True, **report) -> WorkerProc:
    w = WorkerProc(pid, slot, None, generation, started=started)
    if ready:
        w.mark_ready(started + 1)
        w.report = WorkerReport(pid=pid, slot=slot, state=WorkerState.IDLE)
    if report:
        w.report = dataclasses.replace(w.report, **report)
    return w


def always_room(slot: int) -> bool:
    return True


# -- lifecycle ----------------------------------------------------------------------------------


def test_phases_move_only_along_the_table_and_stopping_needs_a_reason():
    w = worker(ready=False)
    assert w.phase is Phase.STARTING
    with pytest.raises(ValueError, match="needs an exit reason"):
        w.change_phase(Phase.STOPPING)
    w.change_phase(Phase.RUNNING)
    w.change_phase(Phase.STOPPING, ExitReason.SCALED_DOWN, "scaled down")
    with pytest.raises(ValueError, match="STOPPING -> RUNNING"):
        w.change_phase(Phase.RUNNING)
    w.change_phase(Phase.KILLED, ExitReason.MEMORY_HARD_LIMIT, "RSS 900 MB")
    assert (w.exit_reason, w.why) == (ExitReason.SCALED_DOWN, "scaled down"), "a retired worker stays retired"
    w.change_phase(Phase.EXITED)
    with pytest.raises(ValueError, match="EXITED -> KILLED"):
        w.change_phase(Phase.KILLED, ExitReason.JOB_TIMEOUT)


def test_a_recycled_worker_keeps_its_slot_a_retired_one_does_not():
    recycled, retired = worker(pid=1), worker(pid=2, slot=2)
    recycled.change_phase(Phase.STOPPING, ExitReason.RECYCLED_MEMORY, "recycled for memory")
    retired.change_phase(Phase.STOPPING, ExitReason.SCALED_DOWN, "scaled down")
    assert (recycled.counted, retired.counted) == (True, False)
    assert (recycled.retiring, retired.retiring) == (True, True)


# -- stuck workers ------------------------------------------------------------------------------


def test_stuck_workers_are_killed_with_their_reason():
    clock = Clock()
    c = cfg(ready_timeout=30.0, timeout=10.0)
    booting = worker(pid=1, ready=False, started=clock.now)
    silent = worker(pid=2, slot=2, started=clock.now)
    overran = worker(pid=3, slot=3, started=clock.now, state=WorkerState.BUSY, task="t-9", since=5000.0, deadline=60.0)
    healthy = worker(pid=4, slot=4, started=clock.now)
    clock.advance(31)
    for w in (overran, healthy):
        w.last_seen = clock.now
    kills = find_stuck([booting, silent, overran, healthy], c, clock.now, now_wall=5061.0)
    assert kills == [
        Kill(1, ExitReason.READY_TIMEOUT, "not ready after workers.ready_timeout = 30 s"),
        Kill(2, ExitReason.HEARTBEAT_TIMEOUT, "no heartbeat for 31 s (workers.timeout)"),
        Kill(3, ExitReason.JOB_TIMEOUT, "task t-9 exceeded its time limit of 60 s"),
    ]
    assert find_stuck([overran], c, clock.now, now_wall=5059.0) == [], "within its deadline"
    silent.change_phase(Phase.KILLED, ExitReason.HEARTBEAT_TIMEOUT, "x")
    assert find_stuck([silent], c, clock.now, 0.0) == [], "killed once, not again every pass"


# -- memory -------------------------------------------------------------------------------------


def test_hard_rss_kills_at_once_and_max_rss_recycles_after_the_job():
    big, medium, small = worker(pid=1), worker(pid=2, slot=2), worker(pid=3, slot=3)
    big.rss_mb, medium.rss_mb, small.rss_mb = 2100.0, 900.0, 300.0
    actions = check_memory([big, medium, small], soft_mb=800, hard_mb=2000)
    assert actions == [
        Kill(1, ExitReason.MEMORY_HARD_LIMIT, "RSS 2100 MB over workers.hard_rss_mb = 2000"),
        Retire(2, ExitReason.RECYCLED_MEMORY, "RSS 900 MB over workers.max_rss_mb = 800"),
    ]
    medium.change_phase(Phase.STOPPING, ExitReason.RECYCLED_MEMORY, "recycled for memory")
    assert check_memory([medium], 800, 2000) == [], "asked once"
    assert check_memory([big], soft_mb=0, hard_mb=0) == [], "0 = no limit"
    starting = worker(pid=4, ready=False)
    starting.rss_mb = 900.0
    assert check_memory([starting], 800, 2000) == [], "a worker still loading is not recycled"


# -- scaling and rolling replacement ------------------------------------------------------------


def test_missing_workers_are_spawned_in_the_lowest_free_slots_and_extras_retired():
    clock = Clock()
    two = [worker(pid=1, slot=1), worker(pid=3, slot=3)]
    assert scale(two, {}, 4, 0, clock.now, always_room) == [Spawn(2), Spawn(4)]
    four = [worker(pid=i, slot=i, started=clock.now + i) for i in range(1, 5)]
    assert scale(four, {}, 1, 0, clock.now, always_room) == [
        Retire(1, ExitReason.SCALED_DOWN, "scaled down"),
        Retire(2, ExitReason.SCALED_DOWN, "scaled down"),
        Retire(3, ExitReason.SCALED_DOWN, "scaled down"),
    ]
    assert scale(four, {}, 4, 0, clock.now, always_room) == []


def test_a_worker_being_killed_is_not_also_retired():
    clock = Clock()
    killed, healthy = worker(pid=1, slot=1, started=clock.now), worker(pid=2, slot=2, started=clock.now + 1)
    killed.change_phase(Phase.KILLED, ExitReason.HEARTBEAT_TIMEOUT, "no heartbeat for 61 s (workers.timeout)")
    assert scale([killed, healthy], {}, 1, 0, clock.now, always_room) == [], "the oldest extra is going already"
    assert scale([killed, healthy], {}, 2, 1, clock.now, always_room) == [Spawn(3)], "a reload: a new worker first"
    new = worker(pid=3, slot=3, generation=1, started=clock.now + 2)
    assert scale([killed, healthy, new], {}, 2, 1, clock.now, always_room) == [], "not replaced: it is going already"


def test_a_reload_rolls_workers_one_at_a_time_without_losing_capacity():
    clock = Clock()
    old = [worker(pid=1, slot=1, generation=0), worker(pid=2, slot=2, generation=0, started=clock.now + 1)]
    assert scale(old, {}, 2, 1, clock.now, always_room) == [Spawn(3)], "a new worker first"
    new = worker(pid=3, slot=3, generation=1, ready=False, started=clock.now + 2)
    assert scale([*old, new], {}, 2, 1, clock.now, always_room) == [], "wait until it serves"
    new.mark_ready(clock.now + 3)
    assert scale([*old, new], {}, 2, 1, clock.now, always_room) == [
        Retire(1, ExitReason.REPLACED, "replaced after reload")
    ]
    assert old_generation_left([*old, new], 1)
    old[0].change_phase(Phase.STOPPING, ExitReason.REPLACED, "replaced after reload")
    assert scale([*old, new], {}, 2, 1, clock.now, always_room) == [Spawn(4)], "the next replacement, while 1 drains"
    assert not old_generation_left([new], 1)


def test_a_slot_waits_for_gpu_memory_on_its_own_deadline():
    clock = Clock()
    full = {1: False, 2: True}
    actions = scale([], {}, 2, 0, clock.now, lambda slot: full[slot])
    assert actions == [WaitForGpu(1, clock.now + GPU_WAIT_S), Spawn(2)]
    slots = {1: Slot(gpu_wait_until=clock.now + GPU_WAIT_S)}
    clock.advance(GPU_WAIT_S - 1)
    assert scale([], slots, 1, 0, clock.now, always_room) == [], "not asked again before its deadline"
    clock.advance(1)
    assert scale([], slots, 1, 0, clock.now, always_room) == [Spawn(1)]
    assert slots[1].backoff_until == 0.0, "waiting for memory is not a crash backoff"


# -- exits --------------------------------------------------------------------------------------


def test_a_crash_loop_backs_off_1_2_4_up_to_60_s_and_a_healthy_worker_starts_over():
    clock = Clock()
    slot = Slot()
    delays = []
    for pid in range(10):
        w = worker(pid=pid, started=clock.now)
        clock.advance(5)
        verdict = judge_exit(w, exit_code_of(EXIT_1), "exit code 1", slot, boot_attempts=3, now=clock.now)
        assert (verdict.reason, verdict.expected, verdict.give_up) == (ExitReason.CRASHED, False, False)
        slot = verdict.slot
        delays.append(verdict.backoff_s)
        assert slot.backoff_until == clock.now + verdict.backoff_s
        assert scale([], {1: slot}, 1, 0, clock.now, always_room) == [], "the slot stays empty while it backs off"
        clock.advance(verdict.backoff_s)
        assert scale([], {1: slot}, 1, 0, clock.now, always_room) == [Spawn(1)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert [CRASH_BACKOFF.delay(n) for n in (1, 7)] == [1, 60]
    worked = worker(pid=99, started=clock.now, done=1)
    assert judge_exit(worked, 1, "exit code 1", slot, 3, clock.now + 1).backoff_s == 1, "it finished jobs"
    long_lived = worker(pid=98, started=clock.now)
    assert judge_exit(long_lived, 1, "exit code 1", slot, 3, clock.now + 61).backoff_s == 1, "it stayed up 61 s"


def test_a_worker_killed_once_ready_is_replaced_at_once():
    w = worker()
    w.change_phase(Phase.KILLED, ExitReason.HEARTBEAT_TIMEOUT, "no heartbeat for 61 s (workers.timeout)")
    verdict = judge_exit(w, exit_code_of(KILLED_9), "killed by SIGKILL", Slot(failures=5), 3, 2000.0)
    assert (verdict.reason, verdict.expected, verdict.backoff_s) == (ExitReason.HEARTBEAT_TIMEOUT, False, 0.0)
    assert verdict.reason.restart_label == "heartbeat_timeout"


def test_max_jobs_recycling_is_an_expected_exit_counted_as_a_restart():
    w = worker(done=5)
    verdict = judge_exit(w, exit_code_of(EXIT_5), "exit code 5", Slot(), 3, 2000.0)
    assert (verdict.reason, verdict.expected, verdict.backoff_s) == (ExitReason.RECYCLED_MAX_JOBS, True, 0.0)
    assert verdict.slot == Slot()
    assert verdict.reason.restart_label == "recycled_max_jobs"


@pytest.mark.parametrize(
    ("decided", "ready", "status", "label"),
    [
        (None, True, EXIT_1, "crashed"),
        (None, False, EXIT_1, "boot_failed"),
        (None, False, EXIT_3, "boot_failed"),
        (None, True, EXIT_3, "boot_failed"),  # a reconnect found the queues declared otherwise
        (None, True, EXIT_5, "recycled_max_jobs"),
        (None, True, EXIT_0, "signalled"),  # an operator's kill -TERM / -QUIT <worker>: not a recycle
        (None, True, KILLED_9, "crashed"),
        (ExitReason.RECYCLED_MEMORY, True, EXIT_0, "recycled_memory"),
        (ExitReason.SCALED_DOWN, True, EXIT_0, None),
        (ExitReason.REPLACED, True, EXIT_0, None),
        (ExitReason.HEARTBEAT_TIMEOUT, True, KILLED_9, "heartbeat_timeout"),
        (ExitReason.JOB_TIMEOUT, True, KILLED_9, "job_timeout"),
        (ExitReason.MEMORY_HARD_LIMIT, True, KILLED_9, "memory_hard_limit"),
        (ExitReason.READY_TIMEOUT, False, KILLED_9, "ready_timeout"),
    ],
)
def test_restart_reasons(decided, ready, status, label):
    """The whisperd_worker_restarts label: the reason recorded where the decision was made."""
    w = worker(ready=ready)
    if decided is not None:
        w.change_phase(Phase.KILLED if decided.kill else Phase.STOPPING, decided, "why")
    verdict = judge_exit(w, exit_code_of(status), "how", Slot(), 3, 2000.0)
    assert verdict.reason.restart_label == label


def test_an_operators_signal_to_a_worker_is_no_failure_and_no_recycle():
    """Exit code 0 is a stop someone asked for: restarted at once, without backoff, labelled so."""
    verdict = judge_exit(worker(done=2), exit_code_of(EXIT_0), "exit code 0", Slot(failures=4), 3, 2000.0)
    assert (verdict.reason, verdict.expected, verdict.backoff_s) == (ExitReason.SIGNALLED, True, 0.0)
    assert verdict.reason.restart_label == "signalled" and not verdict.reason.retired


def test_failed_starts_count_up_to_boot_attempts_then_give_up():
    slot = Slot()
    for attempt in (1, 2, 3):
        w = worker(pid=attempt, ready=False, state=WorkerState.BOOT_FAILED, error="cannot load model 'x': bad")
        verdict = judge_exit(w, 3, "exit code 3", slot, boot_attempts=3, now=2000.0 + attempt)
        slot = verdict.slot
        assert (verdict.failed_start, verdict.give_up, slot.boot_failures) == (True, attempt == 3, attempt)
        assert slot.last_error == "cannot load model 'x': bad"
    killed = worker(pid=9, ready=False)
    killed.change_phase(Phase.KILLED, ExitReason.READY_TIMEOUT, "not ready after workers.ready_timeout = 600 s")
    verdict = judge_exit(killed, None, "killed by SIGKILL", Slot(), 3, 2000.0)
    assert verdict.slot.last_error == "not ready after workers.ready_timeout = 600 s"
    assert verdict.backoff_s == 1, "a failed start backs off even when we killed it"


# -- reload -------------------------------------------------------------------------------------


def test_a_reload_whose_workers_cannot_start_is_rolled_back():
    before = config.parse({"model": {"name": "small"}, "workers": {"count": 2, "max_jobs": 100}})
    after = config.parse({"model": {"name": "broken.pt"}, "workers": {"count": 3, "max_jobs": 5}})
    assert plan_reload(before, after, cores=6).replace_workers
    new_gen = worker(pid=1, generation=1, ready=False)
    old_gen = worker(pid=2, generation=0, ready=False)
    assert roll_back_on_give_up(new_gen, generation=1, reload_pending=True)
    assert not roll_back_on_give_up(old_gen, generation=1, reload_pending=True), "the running settings fail: stop"
    assert not roll_back_on_give_up(new_gen, generation=1, reload_pending=False), "the reload had completed"
    restored = roll_back(before, after)
    assert restored.model.name == "small" and restored.workers.count == 3
    assert not plan_reload(before, restored, cores=6).replace_workers, "the running workers match it again"


def test_a_thread_count_change_on_reload_is_told_to_the_workers_without_replacing_them():
    assert plan_reload(cfg(count=2), cfg(count=2, threads=3), cores=8).threads == 3
    assert plan_reload(cfg(count=2), cfg(count=4), cores=8).threads == 2, "8 cores over 4 workers"
    plan = plan_reload(cfg(count=2), cfg(count=3), cores=8)
    assert (plan.replace_workers, plan.threads) == (False, 2), "a count change alone keeps the workers"
    assert plan_reload(cfg(count=2), cfg(count=2), cores=8).threads is None
    assert plan_reload(cfg(max_jobs=1), cfg(max_jobs=2), cores=8).replace_workers


def test_the_pool_is_ready_when_every_wanted_worker_of_the_current_settings_serves():
    clock = Clock()
    serving = [worker(pid=1, slot=1, generation=1), worker(pid=2, slot=2, generation=1)]
    assert all_ready(serving, 2, generation=1)
    assert not all_ready(serving[:1], 2, generation=1), "one short"
    assert not all_ready(serving, 2, generation=2), "old settings: a reload is still rolling"
    starting = worker(pid=3, slot=3, generation=1, ready=False)
    assert not all_ready([*serving[:1], starting], 2, generation=1)
    serving[0].last_seen = clock.now
    serving[1].last_seen = clock.now - 11
    assert heartbeats_ok(serving[:1], timeout=10.0, now=clock.now)
    assert not heartbeats_ok(serving, timeout=10.0, now=clock.now), "no watchdog ping while one is silent"
    assert heartbeats_ok([starting], timeout=10.0, now=clock.now + 500), "a loading worker does not report yet"
