"""The control socket: ``whisperd status`` asks the running supervisor how it is doing.

The supervisor listens on a unix stream socket in its runtime directory. Every connection is
answered with one JSON document and closed: no request to parse means a client can never make
the supervisor's loop wait for it. Access is the file mode (0660: the daemon's user and group),
so only the operator and the service account can read worker details.

The supervisor never queries the broker here: queue depths come from worker reports (each
worker checks them every few seconds on its own connection), so answering is instant even when
the broker is down.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import time
from typing import Any

from whisperd.config import Config
from whisperd.snapshot import PoolSnapshot

log = logging.getLogger("whisperd.supervisor")

SOCKET_NAME = "control.sock"
SYSTEM_RUNTIME_DIR = "/run/whisperd"
SEND_TIMEOUT_S = 1.0
MAX_ANSWER = 4 * 2**20
BACKLOG = 128
CLIENTS_PER_PASS = 64  # answered per pass of the supervisor's loop: a connect flood cannot hold the loop


class NotRunning(RuntimeError):
    """No daemon answers on the control socket; str() says where we looked and why."""


class Busy(RuntimeError):
    """A daemon listens on the control socket but did not answer in time (e.g. a flood of
    clients fills its queue): it is running, its state is unknown."""


def default_runtime_dir() -> str:
    """Where a daemon started by hand keeps its socket: /run/whisperd as root, else a per-user dir."""
    if os.geteuid() == 0:
        return SYSTEM_RUNTIME_DIR
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, "whisperd")
    return fallback_runtime_dir()


def fallback_runtime_dir() -> str:
    return os.path.join("/tmp", f"whisperd-{os.geteuid()}")


def check_private_dir(directory: str) -> None:
    """Refuse a socket directory in a shared place (/tmp) unless it is ours alone.

    Anyone can create /tmp/whisperd-<uid> first: as a symlink, or a directory they own, they
    could read our status or answer ``whisperd status`` in our name.
    """
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(errno.EPERM, f"{directory} is not a directory (a symlink?); remove it")
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(
            errno.EPERM, f"{directory} must be owned by uid {os.geteuid()} with mode 0700 (it is uid "
            f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); remove it or set control.socket",
        )  # fmt: skip


def socket_path(cfg: Config) -> str:
    """control.socket, else $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=whisperd), else the default."""
    if cfg.control.socket:
        return cfg.control.socket
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return os.path.join(runtime or default_runtime_dir(), SOCKET_NAME)


def client_candidates(cfg: Config) -> list[str]:
    """Paths ``whisperd status`` tries: the daemon's own choice, then the systemd service's."""
    first = socket_path(cfg)
    system = os.path.join(SYSTEM_RUNTIME_DIR, SOCKET_NAME)
    return [first] if cfg.control.socket or first == system else [first, system]


class ControlServer:
    """The supervisor's end: a non-blocking listening socket that the main loop selects on."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self._inode: int | None = None

    def open(self) -> bool:
        """Bind the socket; False (with a warning) when another live daemon already owns the path."""
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o750 if os.geteuid() == 0 else 0o700, exist_ok=True)
            if directory == fallback_runtime_dir():
                check_private_dir(directory)
            if _answers(self.path):
                log.warning("control socket %s belongs to another running whisperd; `whisperd status` "
                            "will not reach this one (set control.socket to run several)", self.path)  # fmt: skip
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # stale, from a daemon that was killed
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o117)  # created 0660: never readable by others, not even briefly
            try:
                sock.bind(self.path)
            finally:
                os.umask(old_umask)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError as e:
            log.warning("cannot open the control socket %s (%s); `whisperd status` will not work", self.path, e)
            return False
        self.sock = sock
        self._inode = os.stat(self.path).st_ino
        log.info("control socket: %s", self.path)
        return True

    def serve(self, snapshot: Any) -> None:
        """Answer every waiting client with ``snapshot()``; called when the socket is readable."""
        if self.sock is None:
            return
        for _ in range(CLIENTS_PER_PASS):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("control socket: cannot accept a client: %s", e)
                    return
                raise
            with conn:
                try:
                    payload = json.dumps(snapshot(), default=str).encode() + b"\n"
                    conn.settimeout(SEND_TIMEOUT_S)
                    conn.sendall(payload)
                except OSError as e:
                    log.debug("control socket: client went away: %s", e)

    def close_in_child(self) -> None:
        """In a forked worker: drop the fd without touching the file the supervisor still serves."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        try:  # remove it only if it is still ours (a newer daemon may have replaced it)
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def _answers(path: str) -> bool:
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def query(paths: list[str], timeout: float = 5.0) -> dict[str, Any]:
    """The client's end: the first daemon that answers on one of ``paths``.

    Raises NotRunning when nobody listens, and Busy when a daemon listens but gives no whole
    answer within ``timeout`` (its queue of clients stays full, or it is stuck): ``whisperd
    status`` must not call a running daemon "not running".
    """
    problems, busy = [], []
    for path in paths:
        try:
            os.stat(path)
        except FileNotFoundError:
            problems.append(f"{path}: no such socket")
            continue
        except PermissionError:
            problems.append(f"{path}: permission denied (run as root or as a member of the daemon's group)")
            continue
        if os.path.dirname(path) == fallback_runtime_dir():
            try:
                check_private_dir(os.path.dirname(path))  # whoever made it could answer in our name
            except PermissionError as e:
                problems.append(f"{path}: refused: {e.strerror}")
                continue
        try:
            return _ask(path, time.monotonic() + timeout)
        except PermissionError:
            problems.append(f"{path}: permission denied (run as root or as a member of the daemon's group)")
        except (ConnectionRefusedError, FileNotFoundError):
            problems.append(f"{path}: nobody is listening (stale socket)")
        except (TimeoutError, BlockingIOError) as e:
            busy.append(f"{path}: no answer within {timeout:.0f} s ({e.strerror or 'timed out'})")
        except (OSError, ValueError) as e:
            problems.append(f"{path}: {e}")
    if busy:
        raise Busy("; ".join(busy))
    raise NotRunning("; ".join(problems))


def _ask(path: str, deadline: float) -> dict[str, Any]:
    """Connect (again while the daemon's queue of clients is full) and read one whole answer."""
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                s.connect(path)
            except BlockingIOError:  # EAGAIN: the listen queue is full; a running daemon empties it
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)
                continue
            chunks: list[bytes] = []
            while sum(map(len, chunks)) < MAX_ANSWER:
                s.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        if not chunks and time.monotonic() < deadline:
            continue  # accepted, then closed unanswered: it was answering others
        if not chunks:
            raise TimeoutError(110, "connected, but no answer")
        return json.loads(b"".join(chunks))


def status_document(snap: PoolSnapshot, answered_on: str) -> dict[str, Any]:
    """What ``whisperd status`` shows, from the supervisor loop's snapshot of the pool.

    ``config`` and ``socket`` say which daemon answered, so a client can tell it from another.
    """
    from whisperd import __version__

    now_wall = time.time()
    workers = [
        {
            "slot": w.slot,
            "pid": w.pid,
            "state": w.state,
            "exit_reason": w.exit_reason.value if w.exit_reason else None,
            "task": w.report.task,
            "task_elapsed_s": round(elapsed, 1) if (elapsed := w.report.elapsed_s(now_wall)) is not None else None,
            "jobs_done": w.report.done,
            "jobs_failed": w.report.failed,
            "rss_mb": round(w.rss_mb, 1) if w.rss_mb else None,
            "gpu_mb": w.gpu_mb,
            "device": w.report.device,
            "diarizer": w.report.diarizer,
            "uptime_s": round(w.uptime_s, 1),
            "broker": w.report.broker.value,
        }
        for w in snap.workers
    ]
    depth = snap.depths
    return {
        "pid": os.getpid(),
        "version": __version__,
        "state": snap.state,
        "config": snap.config,
        "socket": answered_on,
        "workers_wanted": snap.workers_wanted,
        "workers": workers,
        "jobs_done": snap.jobs_done,
        "jobs_failed": snap.jobs_failed,
        "restarts": snap.restarts,
        "broker": snap.broker.value,
        "job_queue": snap.job_queue,
        "queue_depth": depth.jobs if depth else None,
        "dead_letter_depth": depth.dead if depth else None,
        "depth_age_s": round(now_wall - depth.ts, 1) if depth else None,
    }


class OtherDaemon(RuntimeError):
    """The daemon that answered runs another configuration than the one asked about."""


def check_answered_for(status: dict[str, Any], config_path: str) -> None:
    """Refuse a status that another daemon gave: several daemons may share the default socket path,
    and only the first to start owns it. Raises OtherDaemon saying which daemon answered."""
    theirs = status.get("config")
    if theirs is None or os.path.realpath(theirs) != os.path.realpath(config_path):
        raise OtherDaemon(
            f"the daemon that answered on {status.get('socket', 'the control socket')} (pid {status.get('pid')}) "
            f"runs {theirs or 'an unknown configuration'}, not {config_path}; the daemon of {config_path} is not "
            "running, or could not open its control socket (set control.socket to run several daemons)"
        )


def format_status(s: dict[str, Any]) -> str:
    """The human table of ``whisperd status``."""

    def num(v: Any, unit: str = "") -> str:
        return "-" if v is None else f"{v:.0f}{unit}" if isinstance(v, float) else f"{v}{unit}"

    depth = "unknown (no worker connected)" if s["queue_depth"] is None else f"{s['queue_depth']} waiting"
    dead = "unknown" if s["dead_letter_depth"] is None else str(s["dead_letter_depth"])
    lines = [
        f"whisperd {s['version']} (pid {s['pid']}): {s['state']}, {len(s['workers'])}/{s['workers_wanted']} workers, "
        f"{s['jobs_done']} done, {s['jobs_failed']} failed, {s['restarts']} restarts",
        f"config: {s.get('config') or '-'}; control socket: {s.get('socket') or '-'}",
        f"broker: {s['broker']}; queue {s['job_queue']}: {depth}; dead letters: {dead}",
        "",
        f"{'SLOT':>4} {'PID':>7}  {'STATE':<18} {'TASK':<34} {'ELAPSED':>8} {'DONE':>5} {'FAILED':>6} "
        f"{'RSS':>8} {'GPU':>8} {'DIARIZER':>8}",
    ]
    for w in s["workers"]:
        task = w["task"] or "-"
        lines.append(
            f"{w['slot']:>4} {w['pid']:>7}  {w['state']:<18} {task[:34]:<34} {num(w['task_elapsed_s'], ' s'):>8} "
            f"{w['jobs_done']:>5} {w['jobs_failed']:>6} {num(w['rss_mb'], ' MB'):>8} {num(w['gpu_mb'], ' MB'):>8} "
            f"{'loaded' if w.get('diarizer') else '-':>8}"
        )
    return "\n".join(lines)
