"""The supervisor's child processes: forking a worker, signalling it, reaping it, saying how it ended.

The fork happens here and the worker's code is imported only in the child, after the fork, so
the supervisor itself never imports torch. Which worker to fork, kill or replace is decided in
``whisperd.pool``; this module only does it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator

from whisperd.config import Config
from whisperd.lifecycle import WorkerExit
from whisperd.pool import WorkerProc

log = logging.getLogger("whisperd.supervisor")


def fork_worker(
    cfg: Config, slot: int, threads: int, device: str | None, generation: int, leave_supervisor: Callable[[], None]
) -> WorkerProc:
    """Fork worker ``slot``; in the parent, its handle. The child calls ``leave_supervisor`` (to drop
    what belongs to the supervisor), runs the worker and never returns. OSError when no process or
    descriptor is left (EAGAIN, EMFILE)."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        parent_sock.close()
        child_sock.close()
        raise
    if pid:
        child_sock.close()
        parent_sock.setblocking(False)
        w = WorkerProc(pid, slot, parent_sock, generation, started=time.monotonic())
        log.debug("spawned worker %d (pid %d)", slot, pid)
        return w
    code: int = WorkerExit.CRASHED
    try:
        parent_sock.close()
        leave_supervisor()
        from whisperd.worker import Worker

        code = Worker(cfg, slot, threads, child_sock, device).run()
    except BaseException:
        log.exception("worker %d crashed", slot)
    finally:
        logging.shutdown()
        os._exit(code)


def send_signal(pid: int, sig: int) -> None:
    """Signal a child that may have exited already (it is reaped later)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def reaped() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of every child that has exited, without blocking."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def describe_status(status: int) -> str:
    """A wait status in words, for the logs: "killed by SIGKILL", "exit code 3"."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by {signal.Signals(sig).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
