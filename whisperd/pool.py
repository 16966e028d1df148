"""The pool of workers as the supervisor sees it, and every supervision decision about it.

Each worker process moves through named phases (supervisord's process states, for forked
workers): STARTING until it reports ready, RUNNING, STOPPING once asked to exit, KILLED once sent
SIGKILL, EXITED once reaped. ``WorkerProc.change_phase`` is the only way to move it, and a move
to STOPPING or KILLED records the ``ExitReason`` where the decision is made, so the log, the
metrics and ``whisperd status`` read the reason instead of working it out again.

The policies are pure functions: given the workers, the slots, the configuration and the clock
they return actions (spawn, retire, recycle, kill, wait for GPU memory) or a verdict on an exit.
The supervisor applies them (signals, forks, logs); unit tests call them with a fake clock.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from whisperd.config import Config
from whisperd.lifecycle import TRANSITIONS, ExitReason, Phase, reason_from_exit
from whisperd.reporting import WorkerReport, WorkerState
from whisperd.retry import Backoff

CRASH_BACKOFF = Backoff(first=1.0, limit=60.0)  # 1, 2, 4 ... 60 s between restarts of a crashing slot
STABLE_AFTER_S = 60.0  # a worker up this long was healthy: its death restarts the backoff
GPU_WAIT_S = 30.0  # how long a slot waits before asking for free GPU memory again


@dataclass
class WorkerProc:
    """One forked worker: its lifecycle, why it ends, and its latest report."""

    pid: int
    slot: int
    sock: socket.socket | None
    generation: int
    started: float
    last_seen: float = 0.0
    report: WorkerReport = field(default_factory=WorkerReport)
    phase: Phase = Phase.STARTING
    ready_at: float | None = None  # when it first reported ready (set by mark_ready only)
    exit_reason: ExitReason | None = None
    why: str = ""  # the exit reason in words, for the log
    rss_mb: float = 0.0

    def __post_init__(self) -> None:
        self.last_seen = self.last_seen or self.started

    def change_phase(self, phase: Phase, reason: ExitReason | None = None, why: str = "") -> None:
        """The one way to move a worker; STOPPING and KILLED need the reason, decided by the caller."""
        if phase not in TRANSITIONS[self.phase]:
            raise ValueError(f"worker {self.slot} (pid {self.pid}): no transition {self.phase.name} -> {phase.name}")
        if phase in (Phase.STOPPING, Phase.KILLED):
            if reason is None:
                raise ValueError(f"{phase.name} needs an exit reason")
            # A retired worker killed later (too big, silent) was still retired on purpose; a recycled one
            # killed before its job ended was killed, and is counted so.
            if self.exit_reason is None or not self.exit_reason.retired:
                self.exit_reason, self.why = reason, why
        self.phase = phase

    def mark_ready(self, now: float) -> None:
        """Its first ready report: a starting worker is running from now (a retiring one stays retiring)."""
        if self.ready_at is None:
            self.ready_at = now
            if self.phase is Phase.STARTING:
                self.change_phase(Phase.RUNNING)

    @property
    def ready(self) -> bool:
        return self.ready_at is not None

    @property
    def retiring(self) -> bool:
        """Asked to exit (retired or recycled), not killed."""
        return self.phase is Phase.STOPPING

    @property
    def killed(self) -> bool:
        return self.phase is Phase.KILLED

    @property
    def counted(self) -> bool:
        """Whether it counts towards workers.count (a recycled worker keeps its slot until it exits)."""
        return self.exit_reason is None or not self.exit_reason.retired

    @property
    def busy(self) -> bool:
        return self.report.state is WorkerState.BUSY

    @property
    def jobs_done(self) -> int:
        return self.report.done

    @property
    def jobs_failed(self) -> int:
        return self.report.failed


@dataclass(frozen=True)
class Slot:
    """What the supervisor remembers about a worker slot across the processes that fill it."""

    failures: int = 0  # crashes in a row, for the crash backoff
    boot_failures: int = 0  # failed starts in a row, for workers.boot_attempts
    backoff_until: float = 0.0  # crash backoff: no restart before this (monotonic)
    gpu_wait_until: float = 0.0  # not enough GPU memory: ask again after this (monotonic)
    last_error: str = ""

    def blocked(self, now: float) -> bool:
        return now < self.backoff_until or now < self.gpu_wait_until


# -- actions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    slot: int


@dataclass(frozen=True)
class Retire:
    """Ask a worker to exit after its job (SIGTERM; SIGQUIT while it is still starting)."""

    pid: int
    reason: ExitReason
    why: str


@dataclass(frozen=True)
class Kill:
    pid: int
    reason: ExitReason
    why: str


@dataclass(frozen=True)
class WaitForGpu:
    """Not enough free GPU memory for the slot's worker: ask again at ``until``."""

    slot: int
    until: float


Action = Spawn | Retire | Kill | WaitForGpu


# -- policies -------------------------------------------------------------------------------------


def find_stuck(workers: Iterable[WorkerProc], cfg: Config, now: float, now_wall: float) -> list[Kill]:
    """Workers that never became ready, stopped reporting, or overran their job's time limit."""
    kills = []
    for w in workers:
        if w.killed:
            continue
        if not w.ready:
            if now - w.started > cfg.workers.ready_timeout:
                why = f"not ready after workers.ready_timeout = {cfg.workers.ready_timeout:.0f} s"
                kills.append(Kill(w.pid, ExitReason.READY_TIMEOUT, why))
        elif now - w.last_seen > cfg.workers.timeout:
            why = f"no heartbeat for {now - w.last_seen:.0f} s (workers.timeout)"
            kills.append(Kill(w.pid, ExitReason.HEARTBEAT_TIMEOUT, why))
        elif w.report.overran(now_wall):
            why = f"task {w.report.task} exceeded its time limit of {w.report.deadline:.0f} s"
            kills.append(Kill(w.pid, ExitReason.JOB_TIMEOUT, why))
    return kills


def check_memory(workers: Iterable[WorkerProc], soft_mb: int, hard_mb: int) -> list[Retire | Kill]:
    """Kill a worker over ``hard_mb`` at once; recycle one over ``soft_mb`` after its job (0 = off)."""
    actions: list[Retire | Kill] = []
    for w in workers:
        if w.killed or not w.rss_mb:
            continue
        if hard_mb and w.rss_mb > hard_mb:
            why = f"RSS {w.rss_mb:.0f} MB over workers.hard_rss_mb = {hard_mb}"
            actions.append(Kill(w.pid, ExitReason.MEMORY_HARD_LIMIT, why))
        elif soft_mb and w.rss_mb > soft_mb and not w.retiring and w.ready:
            why = f"RSS {w.rss_mb:.0f} MB over workers.max_rss_mb = {soft_mb}"
            actions.append(Retire(w.pid, ExitReason.RECYCLED_MEMORY, why))
    return actions


def scale(
    workers: Iterable[WorkerProc],
    slots: dict[int, Slot],
    target: int,
    generation: int,
    now: float,
    gpu_room: Callable[[int], bool],
) -> list[Action]:
    """Spawn missing workers, retire extras, and roll old-generation workers one at a time.

    During a rolling replacement a new worker is started first, and an old one retired only once
    every new one serves, so capacity never drops. ``gpu_room(slot)`` says whether the slot's
    worker would fit in its GPU's free memory now.
    """
    live = list(workers)
    counted = sorted((w for w in live if w.counted), key=lambda w: w.started)
    old = [w for w in counted if w.generation != generation]
    new = [w for w in counted if w.generation == generation]
    if old:
        if any(not w.ready for w in new):
            return []  # wait until the replacement is serving
        if len(counted) > target:  # a worker being killed is on its way out already
            return [] if old[0].killed else [Retire(old[0].pid, ExitReason.REPLACED, "replaced after reload")]
        return fill_slots(live, slots, 1, now, gpu_room)
    if len(new) > target:
        extras = new[: len(new) - target]
        return [Retire(w.pid, ExitReason.SCALED_DOWN, "scaled down") for w in extras if not w.killed]
    if len(new) < target:
        return fill_slots(live, slots, target - len(new), now, gpu_room)
    return []


def fill_slots(
    workers: list[WorkerProc], slots: dict[int, Slot], n: int, now: float, gpu_room: Callable[[int], bool]
) -> list[Action]:
    """Spawns for the ``n`` lowest free slots; a slot in crash backoff or waiting for GPU memory
    takes its turn and stays empty."""
    used = {w.slot for w in workers}
    actions: list[Action] = []
    slot = 0
    while n > 0:
        slot += 1
        if slot in used:
            continue
        n -= 1
        if slots.get(slot, Slot()).blocked(now):
            continue
        if not gpu_room(slot):
            actions.append(WaitForGpu(slot, now + GPU_WAIT_S))
            continue
        actions.append(Spawn(slot))
    return actions


def all_ready(workers: Iterable[WorkerProc], target: int, generation: int) -> bool:
    """Whether the pool is complete: ``target`` workers of the current settings, each serving
    (READY=1 at start and at the end of a reload)."""
    counted = [w for w in workers if w.counted]
    return len(counted) == target and all(w.ready and w.generation == generation for w in counted)


def heartbeats_ok(workers: Iterable[WorkerProc], timeout: float, now: float) -> bool:
    """Whether every ready worker reported within ``timeout`` (systemd's watchdog is fed only then)."""
    return all(not w.ready or now - w.last_seen <= timeout for w in workers)


def old_generation_left(workers: Iterable[WorkerProc], generation: int) -> bool:
    """Whether a rolling replacement is still under way (a failed reload can still be rolled back)."""
    return any(w.counted and w.generation != generation for w in workers)


@dataclass(frozen=True)
class ExitVerdict:
    """What a worker's exit means: why it went, whether that is a failure, and what follows."""

    reason: ExitReason
    slot: Slot  # the slot's new bookkeeping
    failed_start: bool = False  # it never became ready (counts towards workers.boot_attempts)
    backoff_s: float = 0.0  # the slot stays empty this long
    give_up: bool = False  # workers.boot_attempts failed starts in a row

    @property
    def expected(self) -> bool:
        return self.reason.expected


def judge_exit(
    w: WorkerProc, exit_code: int | None, how: str, slot: Slot, boot_attempts: int, now: float
) -> ExitVerdict:
    """Classify a reaped worker and update its slot: boot failures, crash backoff, giving up.

    ``exit_code`` is None when a signal ended it; ``how`` says so in words for the slot's error.
    """
    reason = w.exit_reason or reason_from_exit(exit_code, w.ready)
    if reason.expected:
        return ExitVerdict(reason, slot)
    failed_start = not w.ready
    if failed_start:
        slot = dataclasses.replace(
            slot, boot_failures=slot.boot_failures + 1, last_error=w.why or w.report.error or how
        )
        if slot.boot_failures >= boot_attempts:
            return ExitVerdict(reason, slot, failed_start=True, give_up=True)
    backoff_s = 0.0
    if not reason.kill or failed_start:
        # Backoff is for crash loops: a worker that stayed up a while or finished jobs was healthy,
        # and its death is about one job (which the attempt limit deals with). A worker we killed
        # after it was ready (stuck, too big) is replaced at once.
        worked = w.jobs_done + w.jobs_failed > 0
        failures = 1 if worked or now - w.started > STABLE_AFTER_S else slot.failures + 1
        backoff_s = CRASH_BACKOFF.delay(failures)
        slot = dataclasses.replace(slot, failures=failures, backoff_until=now + backoff_s)
    return ExitVerdict(reason, slot, failed_start=failed_start, backoff_s=backoff_s)


def roll_back_on_give_up(w: WorkerProc, generation: int, reload_pending: bool) -> bool:
    """Workers of a reload's new settings that cannot start undo the reload instead of stopping whisperd."""
    return reload_pending and w.generation == generation


def roll_back(previous: Config, current: Config) -> Config:
    """The configuration after an aborted reload: the previous worker settings, with the current
    pool settings (count, timeouts) except those a running worker was built with (max_jobs)."""
    workers = dataclasses.replace(
        current.workers, max_jobs=previous.workers.max_jobs, max_jobs_jitter=previous.workers.max_jobs_jitter
    )
    return dataclasses.replace(previous, workers=workers)


def exit_code_of(status: int) -> int | None:
    """The exit code in a wait status, or None when a signal ended the process."""
    return None if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status)


@dataclass(frozen=True)
class ReloadPlan:
    """What a new configuration changes for the running workers."""

    replace_workers: bool  # settings a worker was built with changed: roll them one at a time
    threads: int | None  # a new thread count to tell the running workers, or None


def worker_fingerprint(cfg: Config) -> dict[str, Any]:
    """The settings a running worker was built with; a change means replacing it."""
    data = cfg.to_dict()
    w = data.pop("workers")
    for section in ("logging", "control", "metrics", "api"):  # the supervisor's own, not the workers'
        data.pop(section)
    data["max_jobs"] = (w["max_jobs"], w["max_jobs_jitter"])
    return data


def threads_for(cfg: Config, cores: int) -> int:
    """workers.threads, or the ``cores`` this process may use split evenly over the workers."""
    if cfg.workers.threads:
        return cfg.workers.threads
    return max(1, cores // cfg.workers.count)


def plan_reload(old: Config, new: Config, cores: int) -> ReloadPlan:
    old_threads, new_threads = threads_for(old, cores), threads_for(new, cores)
    return ReloadPlan(
        replace_workers=worker_fingerprint(new) != worker_fingerprint(old),
        threads=new_threads if new_threads != old_threads else None,
    )
