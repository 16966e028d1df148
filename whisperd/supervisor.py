"""The supervisor: forks N workers, keeps them alive and right-sized, talks to systemd.

Modelled on gunicorn's arbiter: signal handlers only queue the signal and wake the loop; one
loop reaps children, handles queued signals through ``handle_<name>`` methods, kills what is
stuck or too big, and spawns or retires workers to match the configuration.

It never imports torch and never touches CUDA, so every worker is forked from a clean process
and loads its own model after the fork.

systemd: READY=1 once every worker has loaded its model (broker reachable or not: the broker
state is in STATUS, and workers reconnect by themselves); RELOADING=1 ... READY=1 around a
SIGHUP; STOPPING=1 with EXTEND_TIMEOUT_USEC while jobs drain; WATCHDOG=1 only while the loop
runs and no worker has missed its heartbeat.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
from setproctitle import setproctitle

from whisperd import config as config_mod
from whisperd import control, logs, metrics, models
from whisperd.config import Config, ConfigError
from whisperd.gpu import Gpus
from whisperd.memory import hard_rss_limit_mb
from whisperd.notify import Notifier
from whisperd.reporting import read_reports

log = logging.getLogger("whisperd.supervisor")

READY_STATES = ("idle", "busy", "draining", "connecting")
BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 60.0
QUIT_GRACE_S = 10.0


@dataclass
class WorkerProc:
    pid: int
    slot: int
    sock: socket.socket
    generation: int
    started: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    report: dict[str, Any] = field(default_factory=dict)
    ready_at: float | None = None
    retiring: str | None = None  # why we asked it to stop
    holds_slot: bool = False  # a recycled worker keeps its slot until it exits
    killed: str | None = None  # why we killed it, for the log
    cause: str | None = None  # why we killed or recycled it, as a metrics label
    rss_mb: float = 0.0

    @property
    def ready(self) -> bool:
        return self.ready_at is not None

    @property
    def jobs_done(self) -> int:
        return int(self.report.get("done", 0))

    @property
    def jobs_failed(self) -> int:
        return int(self.report.get("failed", 0))

    @property
    def counted(self) -> bool:
        """Whether it counts towards workers.count."""
        return self.retiring is None or self.holds_slot


@dataclass
class Slot:
    failures: int = 0
    boot_failures: int = 0
    not_before: float = 0.0
    last_error: str = ""


def worker_fingerprint(cfg: Config) -> dict[str, Any]:
    """The settings a running worker was built with; a change means replacing it."""
    data = cfg.to_dict()
    w = data.pop("workers")
    for section in ("logging", "control", "metrics", "api"):  # the supervisor's own, not the workers'
        data.pop(section)
    data["max_jobs"] = (w["max_jobs"], w["max_jobs_jitter"])
    return data


def threads_for(cfg: Config) -> int:
    """workers.threads, or the cores this process may use split evenly over the workers."""
    if cfg.workers.threads:
        return cfg.workers.threads
    return max(1, len(os.sched_getaffinity(0)) // cfg.workers.count)


class Supervisor:
    SIGNALS = {
        signal.SIGHUP: "hup",
        signal.SIGTERM: "term",
        signal.SIGINT: "int",
        signal.SIGQUIT: "quit",
        signal.SIGCHLD: "chld",
    }

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.generation = 0
        self.fingerprint = worker_fingerprint(cfg)
        self.previous: tuple[Config, int, dict[str, Any]] | None = None  # to roll back a failed reload
        self.workers: dict[int, WorkerProc] = {}
        self.slots: dict[int, Slot] = {}
        self.sig_queue: list[int] = []
        self.notifier = Notifier()
        self.gpus = Gpus()
        self.state = "starting"
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.done_by_exited = 0
        self.failed_by_exited = 0
        self.restarts = 0
        self._last_memory_check = 0.0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.control = control.ControlServer(control.socket_path(cfg))
        self.metrics: metrics.NullMetrics | metrics.Metrics = metrics.NullMetrics()

    # -- main loop ------------------------------------------------------------------------------

    def run(self) -> int:
        for sig in self.SIGNALS:
            signal.signal(sig, self._queue_signal)
        log.info(
            "whisperd starting: %d workers, model %s, queue %s, %d threads per worker, memory ceiling %s",
            self.cfg.workers.count, self.cfg.model.name, self.cfg.broker.job_queue, threads_for(self.cfg),
            f"{self.hard_rss_mb} MB" if self.hard_rss_mb else "off",
        )  # fmt: skip
        self.notifier.status("starting workers")
        try:
            self.metrics = metrics.start(self.cfg.metrics.listen)
        except metrics.MetricsError as e:
            log.critical("%s", e)
            return 1
        self.control.open()
        try:
            while self.state != "exited":
                self._title()
                self._sleep()
                self._read_reports()
                while self.sig_queue:
                    name = self.SIGNALS[self.sig_queue.pop(0)]
                    getattr(self, f"handle_{name}")()
                self.reap()
                if self.state == "stopping":
                    self._drain_step()
                    continue
                self.murder_stuck()
                self.check_memory()
                self.manage_workers()
                self._notify_progress()
                self.metrics.update(self)
        except Exception:
            log.exception("supervisor failed; stopping workers")
            self._kill_all(signal.SIGKILL)
            return 1
        finally:
            self.control.close()
            self.metrics.close()
        return self.exit_code

    def _queue_signal(self, signum: int, frame: Any) -> None:
        if len(self.sig_queue) < 10:
            self.sig_queue.append(signum)
        try:
            os.write(self._wake_w, b".")
        except OSError:
            pass

    def _sleep(self) -> None:
        if self.sig_queue:
            return
        fds = [self._wake_r] + [w.sock for w in self.workers.values()]
        if self.control.sock is not None:
            fds.append(self.control.sock)
        try:
            readable, _, _ = select.select(fds, [], [], 1.0)
        except OSError as e:
            if e.errno in (errno.EINTR, errno.EBADF):
                return
            raise
        if self.control.sock is not None and self.control.sock in readable:
            self._read_reports()  # answer with what the workers said just now
            self.control.serve(lambda: control.snapshot(self))
        if self._wake_r in readable:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def _read_reports(self) -> None:
        now = time.monotonic()
        for w in self.workers.values():
            reports = read_reports(w.sock)
            if not reports:
                continue
            w.last_seen = now
            for r in reports:
                w.report.update(r)
                self.metrics.on_report(w.pid, r)
            if not w.ready and w.report.get("state") in READY_STATES:
                w.ready_at = now
                self.slots.setdefault(w.slot, Slot()).boot_failures = 0
                log.info("worker %d (pid %d) ready in %.1f s", w.slot, w.pid, now - w.started)

    def _title(self) -> None:
        n = sum(1 for w in self.workers.values() if w.counted)
        suffix = "" if self.state in ("running", "starting") else f" {self.state}"
        setproctitle(f"whisperd: supervisor [{n} workers]{suffix}")

    # -- signals --------------------------------------------------------------------------------

    def handle_chld(self) -> None:
        self.reap()

    def handle_term(self) -> None:
        self.stop(graceful=True)

    def handle_int(self) -> None:
        self.stop(graceful=True)

    def handle_quit(self) -> None:
        self.stop(graceful=False)

    def handle_hup(self) -> None:
        """Re-read the config: scale to the new count, roll workers whose settings changed."""
        if self.state == "stopping":
            return
        self.notifier.reloading()
        log.info("reloading configuration from %s", self.cfg.path)
        try:
            new = config_mod.load(self.cfg.path)
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            self.notifier.ready(self._status_text())
            return
        if missing := models.missing_reason(new.model):
            log.error("reload failed, keeping the running configuration: %s", missing)
            self.notifier.ready(self._status_text())
            return
        logs.set_level(new.logging.level)
        fingerprint = worker_fingerprint(new)
        if fingerprint != self.fingerprint:
            self.previous = (self.cfg, self.generation, self.fingerprint)
            self.generation += 1
            self.fingerprint = fingerprint
            log.info("worker settings changed: replacing workers one at a time")
        old_threads = threads_for(self.cfg)
        self.cfg = new
        if threads_for(new) != old_threads:
            self._tell_workers(threads=threads_for(new))
        self.state = "reloading"

    def _tell_workers(self, **message: Any) -> None:
        payload = json.dumps(message).encode()
        for w in self.workers.values():
            try:
                w.sock.send(payload)
            except OSError:
                pass

    # -- stop -----------------------------------------------------------------------------------

    def stop(self, graceful: bool) -> None:
        if self.state == "stopping" and graceful:
            return
        self.state = "stopping"
        drain = self.cfg.workers.drain_timeout if graceful else QUIT_GRACE_S
        self.stop_deadline = time.monotonic() + drain
        self.notifier.stopping(drain + 5)
        busy = sum(1 for w in self.workers.values() if w.report.get("state") == "busy")
        log.info(
            "%s: %d workers, %d busy%s",
            "stopping gracefully" if graceful else "fast stop", len(self.workers), busy,
            f"; waiting up to {drain:.0f} s for jobs in flight" if graceful and busy else "",
        )  # fmt: skip
        self.notifier.status(f"stopping, {busy} jobs draining")
        for w in self.workers.values():
            fast = not graceful or not w.ready
            self._signal(w, signal.SIGQUIT if fast else signal.SIGTERM)
            w.retiring = w.retiring or "stop"

    def _drain_step(self) -> None:
        if not self.workers:
            log.info("all workers stopped; exiting")
            self.state = "exited"
            return
        if time.monotonic() >= self.stop_deadline:
            for w in self.workers.values():
                log.warning(
                    "worker %d (pid %d) still busy with task %s after the drain timeout; killing it "
                    "(the job returns to the queue)", w.slot, w.pid, w.report.get("task"),
                )  # fmt: skip
            self._kill_all(signal.SIGKILL)
            self.stop_deadline = time.monotonic() + 5
        self.notifier.status(f"stopping, {len(self.workers)} workers left")

    def _kill_all(self, sig: int) -> None:
        for w in list(self.workers.values()):
            self._signal(w, sig)
        deadline = time.monotonic() + 5
        while self.workers and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)

    def _signal(self, w: WorkerProc, sig: int) -> None:
        try:
            os.kill(w.pid, sig)
        except ProcessLookupError:
            pass

    # -- children -------------------------------------------------------------------------------

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is not None:
                self._worker_exited(w, status)

    def _worker_exited(self, w: WorkerProc, status: int) -> None:
        w.sock.close()
        self.done_by_exited += w.jobs_done
        self.failed_by_exited += w.jobs_failed
        how = describe_status(status)
        self.metrics.worker_exited(w, status, stopping=self.state == "stopping")
        slot = self.slots.setdefault(w.slot, Slot())
        if self.state == "stopping":
            log.info("worker %d (pid %d) stopped (%s)", w.slot, w.pid, how)
            return
        expected = w.retiring is not None or (w.killed is None and os.waitstatus_to_exitcode(status) == 0)
        if expected:
            log.info("worker %d (pid %d) exited (%s%s)", w.slot, w.pid, how, f", {w.retiring}" if w.retiring else "")
            return
        self.restarts += 1
        if not w.ready:
            slot.boot_failures += 1
            slot.last_error = w.killed or w.report.get("error") or how
            log.error(
                "worker %d (pid %d) failed to start (%s): %s [attempt %d of %d]",
                w.slot, w.pid, how, slot.last_error, slot.boot_failures, self.cfg.workers.boot_attempts,
            )  # fmt: skip
            if slot.boot_failures >= self.cfg.workers.boot_attempts:
                self._give_up(slot, w)
                return
        else:
            task = w.report.get("task")
            log.error(
                "worker %d (pid %d) died (%s)%s; restarting it",
                w.slot, w.pid, w.killed or how, f" while on task {task}, which goes back to the queue" if task else "",
            )  # fmt: skip
        if w.killed is None or not w.ready:
            # Backoff is for crash loops: a worker that stayed up a while or finished jobs was
            # healthy, and its death is about one job (which the attempt limit deals with).
            worked = w.jobs_done + w.jobs_failed > 0
            if worked or time.monotonic() - w.started > STABLE_AFTER_S:
                slot.failures = 0
            slot.failures += 1
            delay = min(BACKOFF_MAX_S, 2.0 ** (slot.failures - 1))
            slot.not_before = time.monotonic() + delay
            if delay > 1:
                log.info("worker %d will restart in %.0f s", w.slot, delay)

    def _give_up(self, slot: Slot, w: WorkerProc) -> None:
        """Workers that cannot start: roll back a reload, or stop with the reason (no fork storm)."""
        if self.previous is not None and w.generation == self.generation:
            cfg, generation, fingerprint = self.previous
            log.error(
                "reload aborted: workers with the new settings cannot start (%s); keeping the previous settings",
                slot.last_error,
            )
            self.previous = None
            self.cfg, self.generation, self.fingerprint = (
                dataclasses.replace(cfg, workers=self.cfg.workers),
                generation,
                fingerprint,
            )
            slot.boot_failures = 0
            return
        log.critical(
            "giving up: worker %d failed to start %d times in a row: %s", w.slot, slot.boot_failures, slot.last_error
        )
        self.notifier.status(f"failed: {slot.last_error}")
        self.stop(graceful=False)
        self.exit_code = 1

    def spawn(self, slot: int) -> None:
        threads = threads_for(self.cfg)
        device = self.gpus.device_for(slot, self.cfg.model.device)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            child_sock.close()
            parent_sock.setblocking(False)
            self.workers[pid] = WorkerProc(pid, slot, parent_sock, self.generation)
            log.debug("spawned worker %d (pid %d)", slot, pid)
            return
        code = 1
        try:
            parent_sock.close()
            self._become_worker()
            from whisperd.worker import Worker

            code = Worker(self.cfg, slot, threads, child_sock, device).run()
        except BaseException:
            log.exception("worker %d crashed", slot)
        finally:
            logging.shutdown()
            os._exit(code)

    def _become_worker(self) -> None:
        """In the child: drop everything that belongs to the supervisor."""
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for w in self.workers.values():
            w.sock.close()
        self.workers = {}
        self.notifier.close_in_child()
        self.control.close_in_child()
        self.metrics.close_in_child()

    # -- policies -------------------------------------------------------------------------------

    def murder_stuck(self) -> None:
        """Kill workers that stopped reporting, never became ready, or overran their job's limit."""
        now = time.monotonic()
        wall = time.time()
        for w in list(self.workers.values()):
            if w.killed:
                continue
            if not w.ready:
                if now - w.started > self.cfg.workers.ready_timeout:
                    timeout = self.cfg.workers.ready_timeout
                    self._kill(w, "ready_timeout", f"not ready after workers.ready_timeout = {timeout:.0f} s")
            elif now - w.last_seen > self.cfg.workers.timeout:
                self._kill(w, "heartbeat_timeout", f"no heartbeat for {now - w.last_seen:.0f} s (workers.timeout)")
            else:
                since, deadline = w.report.get("since"), w.report.get("deadline")
                if w.report.get("state") == "busy" and since and deadline and wall - since > deadline:
                    task = w.report.get("task")
                    self._kill(w, "job_timeout", f"task {task} exceeded its time limit of {deadline:.0f} s")

    def _kill(self, w: WorkerProc, cause: str, reason: str) -> None:
        log.error("worker %d (pid %d): %s; killing it", w.slot, w.pid, reason)
        w.killed, w.cause = reason, cause
        self._signal(w, signal.SIGKILL)

    @property
    def hard_rss_mb(self) -> int:
        """The RSS at which a worker is killed at once (workers.hard_rss_mb, derived when -1)."""
        return hard_rss_limit_mb(self.cfg)

    def check_memory(self) -> None:
        """Recycle a worker over max_rss_mb after its job; kill one over hard_rss_mb at once."""
        now = time.monotonic()
        if now - self._last_memory_check < 1.0:
            return
        self._last_memory_check = now
        soft, hard = self.cfg.workers.max_rss_mb, self.hard_rss_mb
        for w in list(self.workers.values()):
            try:
                w.rss_mb = psutil.Process(w.pid).memory_info().rss / 2**20
            except psutil.Error:
                continue
            if w.killed:
                continue
            if hard and w.rss_mb > hard:
                self._kill(w, "memory_hard_limit", f"RSS {w.rss_mb:.0f} MB over workers.hard_rss_mb = {hard}")
            elif soft and w.rss_mb > soft and w.retiring is None and w.ready:
                log.warning(
                    "worker %d (pid %d): RSS %.0f MB over workers.max_rss_mb = %d; recycling it after its job",
                    w.slot, w.pid, w.rss_mb, soft,
                )  # fmt: skip
                w.retiring, w.holds_slot, w.cause = "recycled for memory", True, "recycled_memory"
                self._signal(w, signal.SIGTERM)

    def manage_workers(self) -> None:
        """Spawn missing workers, retire extras, and roll old-generation workers one at a time."""
        target = self.cfg.workers.count
        counted = sorted((w for w in self.workers.values() if w.counted), key=lambda w: w.started)
        old = [w for w in counted if w.generation != self.generation]
        new = [w for w in counted if w.generation == self.generation]
        if old:
            if any(not w.ready for w in new):
                return  # wait until the replacement is serving
            if len(counted) > target:
                self._retire(old[0], "replaced after reload")
            else:
                self._spawn_missing(1)
            return
        self.previous = None
        if len(new) > target:
            for w in new[: len(new) - target]:
                self._retire(w, "scaled down")
        elif len(new) < target:
            self._spawn_missing(target - len(new))

    def _retire(self, w: WorkerProc, why: str) -> None:
        log.info("worker %d (pid %d): %s; it finishes its job first", w.slot, w.pid, why)
        w.retiring = why
        self._signal(w, signal.SIGTERM if w.ready else signal.SIGQUIT)

    def _spawn_missing(self, n: int) -> None:
        used = {w.slot for w in self.workers.values()}
        now = time.monotonic()
        slot = 0
        while n > 0:
            slot += 1
            if slot in used:
                continue
            state = self.slots.setdefault(slot, Slot())
            n -= 1
            if state.not_before > now:
                continue
            device = self.gpus.device_for(slot, self.cfg.model.device)
            if not self.gpus.has_room(device, self.cfg.model.device, self.cfg.model.name):
                if state.not_before <= now:
                    log.warning(
                        "worker %d: not enough free GPU memory for model %s; waiting", slot, self.cfg.model.name
                    )
                    state.not_before = now + 30
                continue
            self.spawn(slot)

    # -- reporting ------------------------------------------------------------------------------

    def _notify_progress(self) -> None:
        counted = [w for w in self.workers.values() if w.counted]
        all_ready = len(counted) == self.cfg.workers.count and all(
            w.ready and w.generation == self.generation for w in counted
        )
        if self.state in ("starting", "reloading") and all_ready:
            if self.state == "starting":
                log.info("all %d workers ready", len(counted))
            else:
                log.info("reload complete: %d workers", len(counted))
            self.state = "running"
            self.notifier.ready(self._status_text())
        else:
            self.notifier.status(self._status_text())
        now = time.monotonic()
        healthy = all(not w.ready or now - w.last_seen <= self.cfg.workers.timeout for w in self.workers.values())
        self.notifier.watchdog(healthy)

    def broker_state(self) -> str:
        states = [w.report.get("broker") for w in self.workers.values() if w.ready]
        if "ok" in states:
            return "ok"
        if "unreachable" in states:
            return "unreachable"
        return "connecting"

    def job_totals(self) -> tuple[int, int]:
        """Jobs done and failed since start, by live and exited workers."""
        live = list(self.workers.values())
        return (
            self.done_by_exited + sum(w.jobs_done for w in live),
            self.failed_by_exited + sum(w.jobs_failed for w in live),
        )

    def _status_text(self) -> str:
        live = [w for w in self.workers.values() if w.counted]
        busy = sum(1 for w in live if w.report.get("state") == "busy")
        done, failed = self.job_totals()
        ready = sum(1 for w in live if w.ready)
        text = f"{busy}/{len(live)} busy, {done} done, {failed} failed, broker {self.broker_state()}"
        if ready < len(live):
            text += f", {len(live) - ready} starting"
        return text


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by {signal.Signals(sig).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
