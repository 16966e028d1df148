"""The lifecycle vocabulary of the supervisor and its workers, named once.

A leaf module, as supervisord's ``states.py``: it imports nothing of whisperd's. It says where
a worker is in its life (``Phase``), why it ends (``ExitReason``), the exit code a worker
leaves with (``WorkerExit``, written by the worker and read back when the supervisor reaps it,
as gunicorn's arbiter reads ``WORKER_BOOT_ERROR``), and where the supervisor itself is
(``SupervisorState``). Each state machine has one transition table.
"""

from __future__ import annotations

from enum import Enum, IntEnum, StrEnum


class WorkerExit(IntEnum):
    """A worker process's exit code."""

    STOPPED = 0  # asked to stop: SIGTERM (after its job) or SIGQUIT (at once)
    CRASHED = 1  # an error it did not handle (Python's own exit code for one)
    BOOT_ERROR = 3  # cannot serve with this configuration: model, credentials, queue topology
    RECYCLED = 5  # served workers.max_jobs jobs and leaves for a fresh process


class Phase(Enum):
    """Where a worker process is in its life, from the supervisor's side."""

    STARTING = "starting"  # forked, loading its model
    RUNNING = "running"  # reported ready: serving, or reconnecting to the broker
    STOPPING = "stopping"  # asked to exit (SIGTERM: after its job; SIGQUIT: at once): retiring
    KILLED = "killed"  # sent SIGKILL
    EXITED = "exited"  # reaped


TRANSITIONS: dict[Phase, set[Phase]] = {
    Phase.STARTING: {Phase.RUNNING, Phase.STOPPING, Phase.KILLED, Phase.EXITED},
    Phase.RUNNING: {Phase.STOPPING, Phase.KILLED, Phase.EXITED},
    Phase.STOPPING: {Phase.KILLED, Phase.EXITED},
    Phase.KILLED: {Phase.EXITED},
    Phase.EXITED: set(),
}


class ExitReason(StrEnum):
    """Why a worker exits, decided by whoever ends it; the value is the metrics label."""

    # Retired on purpose: its slot is not refilled, and it is not a restart.
    STOP = "stop"
    SCALED_DOWN = "scaled_down"
    REPLACED = "replaced_after_reload"
    # Recycled: a planned replacement, counted as a restart.
    RECYCLED_MEMORY = "recycled_memory"
    RECYCLED_MAX_JOBS = "recycled_max_jobs"
    # Stopped by a SIGTERM or SIGQUIT the supervisor did not send (an operator's `kill <worker>`):
    # no failure, so no backoff, but its slot is refilled and it counts as a restart.
    SIGNALLED = "signalled"
    # Killed by the supervisor.
    READY_TIMEOUT = "ready_timeout"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    JOB_TIMEOUT = "job_timeout"
    MEMORY_HARD_LIMIT = "memory_hard_limit"
    # Its own doing.
    CRASHED = "crashed"
    BOOT_FAILED = "boot_failed"

    @property
    def retired(self) -> bool:
        """Asked to go for good: the pool no longer counts it."""
        return self in (ExitReason.STOP, ExitReason.SCALED_DOWN, ExitReason.REPLACED)

    @property
    def expected(self) -> bool:
        """An exit the supervisor asked for, the worker announced or an operator caused: no backoff."""
        return self.retired or self in (ExitReason.RECYCLED_MEMORY, ExitReason.RECYCLED_MAX_JOBS, ExitReason.SIGNALLED)

    @property
    def kill(self) -> bool:
        """The supervisor killed it (stuck or too big)."""
        return self in (
            ExitReason.READY_TIMEOUT, ExitReason.HEARTBEAT_TIMEOUT, ExitReason.JOB_TIMEOUT,
            ExitReason.MEMORY_HARD_LIMIT,
        )  # fmt: skip

    @property
    def restart_label(self) -> str | None:
        """The ``whisperd_worker_restarts`` label, or None when the worker is not replaced."""
        return None if self.retired else self.value


def reason_from_exit(code: int | None, ready: bool) -> ExitReason:
    """Why a worker went that nobody in the supervisor decided: read from its exit code
    (None when a signal ended it)."""
    if code == WorkerExit.RECYCLED:
        return ExitReason.RECYCLED_MAX_JOBS
    if code == WorkerExit.STOPPED:
        return ExitReason.SIGNALLED
    if code == WorkerExit.BOOT_ERROR:
        return ExitReason.BOOT_FAILED
    return ExitReason.CRASHED if ready else ExitReason.BOOT_FAILED


class SupervisorState(StrEnum):
    """Where the supervisor is; the value is what `whisperd status` and the metrics show."""

    STARTING = "starting"  # the first workers load their models; systemd has no READY=1 yet
    RUNNING = "running"  # every worker of the current settings was ready once
    RELOADING = "reloading"  # after SIGHUP, until the new settings' workers are ready
    STOPPING = "stopping"  # draining: workers finish their jobs, nothing is restarted
    EXITED = "exited"  # every worker reaped: the loop ends


SUPERVISOR_TRANSITIONS: dict[SupervisorState, set[SupervisorState]] = {
    SupervisorState.STARTING: {SupervisorState.RUNNING, SupervisorState.RELOADING, SupervisorState.STOPPING},
    SupervisorState.RUNNING: {SupervisorState.RELOADING, SupervisorState.STOPPING},
    SupervisorState.RELOADING: {SupervisorState.RUNNING, SupervisorState.RELOADING, SupervisorState.STOPPING},
    SupervisorState.STOPPING: {SupervisorState.STOPPING, SupervisorState.EXITED},
    SupervisorState.EXITED: set(),
}
