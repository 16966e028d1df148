"""The supervisor: forks N workers, keeps them alive and right-sized, talks to systemd.

Modelled on gunicorn's arbiter: signal handlers only queue the signal (``signal.set_wakeup_fd``
wakes the loop); one loop reaps children, handles queued signals through ``handle_<name>``
methods, and applies what the policies in ``whisperd.pool`` decide: kill what is stuck or too
big, spawn or retire workers to match the configuration. Every decision is made in ``pool``;
this module does the effects: signals, forks, logs, systemd, with ``wakeup`` (the sleep),
``children`` (fork, reap), ``resources`` (RSS, GPU), ``reload`` and ``outlets`` (status, metrics).

It never imports torch and never touches CUDA, so every worker is forked from a clean process
and loads its own model after the fork.

systemd: READY=1 once every worker has loaded its model (broker reachable or not: the broker
state is in STATUS, and workers reconnect by themselves); RELOADING=1 ... READY=1 around a
SIGHUP; STOPPING=1 with EXTEND_TIMEOUT_USEC while jobs drain; WATCHDOG=1 only while the loop
runs and no worker has missed its heartbeat.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time

from setproctitle import setproctitle

from whisperd import children, control, layout, logs, metrics, pool, reload
from whisperd.config import Config
from whisperd.gpu import Gpus
from whisperd.lifecycle import SUPERVISOR_TRANSITIONS, ExitReason, Phase, SupervisorState
from whisperd.memory import hard_rss_limit_mb
from whisperd.notify import Notifier
from whisperd.outlets import Outlets
from whisperd.pool import Slot, WorkerProc
from whisperd.reporting import WorkerSettings, read_reports, send_settings
from whisperd.resources import ResourceWatch
from whisperd.snapshot import PoolSnapshot, view
from whisperd.wakeup import Wakeup

log = logging.getLogger("whisperd.supervisor")

QUIT_GRACE_S = 10.0
SPAWN_RETRY_S = 5.0


def threads_for(cfg: Config) -> int:
    """workers.threads, or the cores this process may use split evenly over the workers."""
    return pool.threads_for(cfg, layout.cpu_cores())


class Supervisor:
    SIGNALS = {
        signal.SIGHUP: "hup",
        signal.SIGTERM: "term",
        signal.SIGINT: "int",
        signal.SIGQUIT: "quit",
        signal.SIGCHLD: "chld",
    }

    def __init__(self, cfg: Config) -> None:
        self.gpus = Gpus()
        self.cfg, self.layout = layout.resolve(cfg, self.gpus.count)
        self.generation = 0
        self.previous: Config | None = None  # to roll back a reload whose workers cannot start
        self.workers: dict[int, WorkerProc] = {}
        self.slots: dict[int, Slot] = {}
        self.wakeup = Wakeup(self.SIGNALS)
        self.notifier = Notifier()
        self.state = SupervisorState.STARTING
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.done_by_exited = 0
        self.failed_by_exited = 0
        self.restarts = 0
        self.resources = ResourceWatch(self.gpus)
        self.outlets = Outlets(control.socket_path(cfg))  # `whisperd status` and the metrics

    def _change_state(self, state: SupervisorState) -> None:
        """The one way the supervisor's own state moves (lifecycle.SUPERVISOR_TRANSITIONS)."""
        if state not in SUPERVISOR_TRANSITIONS[self.state]:
            raise ValueError(f"supervisor: no transition {self.state.name} -> {state.name}")
        self.state = state

    # -- main loop ------------------------------------------------------------------------------

    def run(self) -> int:
        self.wakeup.install()
        log.info(
            "whisperd starting: %d workers (%s), model %s, queue %s, %d threads per worker, memory ceiling %s",
            self.cfg.workers.count, self.layout.why, self.cfg.model.name, self.cfg.broker.job_queue,
            threads_for(self.cfg),
            f"{hard_rss_limit_mb(self.cfg)} MB" if hard_rss_limit_mb(self.cfg) else "off",
        )  # fmt: skip
        self.notifier.status("starting workers")
        try:
            self.outlets.open(self.cfg.metrics.listen)
        except metrics.MetricsError as e:
            log.critical("%s", e)
            return 1
        try:
            while self.state is not SupervisorState.EXITED:
                self._title()
                self._sleep()
                self._read_reports()
                while (sig := self.wakeup.pop()) is not None:
                    getattr(self, f"handle_{self.SIGNALS[sig]}")()
                self.reap()
                if self.state is SupervisorState.STOPPING:
                    self._drain_step()
                else:
                    self._supervise()
                self._publish(self.snapshot(gpu=True))
        except Exception:
            log.exception("supervisor failed; stopping workers")
            self._kill_all(signal.SIGKILL)
            return 1
        finally:
            self.outlets.close()
        return self.exit_code

    def _supervise(self) -> None:
        """One pass of the policies: kill what is stuck or too big, then match the configuration."""
        now = time.monotonic()
        self._apply(pool.find_stuck(self.workers.values(), self.cfg, now, time.time()))
        self._apply(self.resources.memory_actions(self.workers.values(), self.cfg, now))
        if not pool.old_generation_left(self.workers.values(), self.generation):
            self.previous = None  # the reload is complete: nothing left to roll back to
        self._apply(
            pool.scale(self.workers.values(), self.slots, self.cfg.workers.count, self.generation, now, self._gpu_room)
        )

    def _publish(self, snap: PoolSnapshot) -> None:
        """Hand the pass's snapshot to systemd, the metrics and any waiting `whisperd status`."""
        if self.state in (SupervisorState.STARTING, SupervisorState.RELOADING, SupervisorState.RUNNING):
            self._notify_progress(snap)
        self.outlets.publish(snap)

    def _sleep(self) -> None:
        """Wait up to a second for a signal, a report or a status client."""
        fds = [w.sock.fileno() for w in self.workers.values() if w.sock is not None]
        self.outlets.woke(self.wakeup.wait(fds + self.outlets.fds()))

    def _read_reports(self) -> None:
        now = time.monotonic()
        for w in self.workers.values():
            reports = read_reports(w.sock) if w.sock is not None else []
            if not reports:
                continue
            w.last_seen = now
            for r in reports:  # each report is whole: the last one is the worker's state
                w.report = r
                self.outlets.metrics.on_report(w.pid, r)
            if not w.ready and w.report.state.ready:
                w.mark_ready(now)
                self.slots[w.slot] = dataclasses.replace(self.slots.get(w.slot, Slot()), boot_failures=0)
                log.info("worker %d (pid %d) ready in %.1f s", w.slot, w.pid, now - w.started)

    def _title(self) -> None:
        n = sum(1 for w in self.workers.values() if w.counted)
        suffix = "" if self.state in (SupervisorState.RUNNING, SupervisorState.STARTING) else f" {self.state}"
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
        if self.state is SupervisorState.STOPPING:
            return
        self.notifier.reloading()
        log.info("reloading configuration from %s", self.cfg.path)
        try:
            new = reload.read_config(self.cfg.path)
        except reload.ReloadRefused as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            self.notifier.ready(self.snapshot().status_text())
            return
        logs.set_level(new.logging.level)
        change = reload.plan(self.cfg, new, self.gpus.count, layout.cpu_cores())
        if change.plan.replace_workers:
            self.previous = self.cfg
            self.generation += 1
            log.info("worker settings changed: replacing workers one at a time")
        self.cfg, self.layout = change.cfg, change.layout
        if change.plan.threads is not None:
            for w in self.workers.values():
                if w.sock is not None:
                    send_settings(w.sock, WorkerSettings(threads=change.plan.threads))
        self._change_state(SupervisorState.RELOADING)

    # -- stop -----------------------------------------------------------------------------------

    def stop(self, graceful: bool) -> None:
        if self.state is SupervisorState.STOPPING and graceful:
            return
        self._change_state(SupervisorState.STOPPING)
        drain = self.cfg.workers.drain_timeout if graceful else QUIT_GRACE_S
        self.stop_deadline = time.monotonic() + drain
        self.notifier.stopping(drain + 5)
        busy = sum(1 for w in self.workers.values() if w.busy)
        log.info(
            "%s: %d workers, %d busy%s",
            "stopping gracefully" if graceful else "fast stop", len(self.workers), busy,
            f"; waiting up to {drain:.0f} s for jobs in flight" if graceful and busy else "",
        )  # fmt: skip
        self.notifier.status(f"stopping, {busy} jobs draining")
        for w in self.workers.values():
            fast = not graceful or not w.ready
            children.send_signal(w.pid, signal.SIGQUIT if fast else signal.SIGTERM)
            if w.phase in (Phase.STARTING, Phase.RUNNING):
                w.change_phase(Phase.STOPPING, ExitReason.STOP, "stop")

    def _drain_step(self) -> None:
        if not self.workers:
            log.info("all workers stopped; exiting")
            self._change_state(SupervisorState.EXITED)
            return
        if time.monotonic() >= self.stop_deadline:
            for w in self.workers.values():
                log.warning(
                    "worker %d (pid %d) still busy with task %s after the drain timeout; killing it "
                    "(the job returns to the queue)", w.slot, w.pid, w.report.task,
                )  # fmt: skip
            self._kill_all(signal.SIGKILL)
            self.stop_deadline = time.monotonic() + 5
        self.notifier.status(f"stopping, {len(self.workers)} workers left")

    def _kill_all(self, sig: int) -> None:
        for w in list(self.workers.values()):
            children.send_signal(w.pid, sig)
        deadline = time.monotonic() + 5
        while self.workers and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)

    # -- actions --------------------------------------------------------------------------------

    def _apply(self, actions: list[pool.Action]) -> None:
        for action in actions:
            if isinstance(action, pool.Spawn):
                try:
                    self.spawn(action.slot)
                except OSError as e:  # no descriptor or process left (EMFILE, EAGAIN): try again later
                    log.error("cannot start worker %d: %s; trying again in %.0f s", action.slot, e, SPAWN_RETRY_S)
                    slot = self.slots.get(action.slot, Slot())
                    self.slots[action.slot] = dataclasses.replace(slot, backoff_until=time.monotonic() + SPAWN_RETRY_S)
                continue
            if isinstance(action, pool.WaitForGpu):
                log.warning(
                    "worker %d: not enough free GPU memory for model %s; waiting", action.slot, self.cfg.model.name
                )
                slot = self.slots.get(action.slot, Slot())
                self.slots[action.slot] = dataclasses.replace(slot, gpu_wait_until=action.until)
                continue
            w = self.workers.get(action.pid)
            if w is None:
                continue
            if isinstance(action, pool.Kill):
                log.error("worker %d (pid %d): %s; killing it", w.slot, w.pid, action.why)
                w.change_phase(Phase.KILLED, action.reason, action.why)
                children.send_signal(w.pid, signal.SIGKILL)
            elif action.reason is ExitReason.RECYCLED_MEMORY:
                log.warning("worker %d (pid %d): %s; recycling it after its job", w.slot, w.pid, action.why)
                w.change_phase(Phase.STOPPING, action.reason, "recycled for memory")
                children.send_signal(w.pid, signal.SIGTERM)
            else:
                log.info("worker %d (pid %d): %s; it finishes its job first", w.slot, w.pid, action.why)
                w.change_phase(Phase.STOPPING, action.reason, action.why)
                children.send_signal(w.pid, signal.SIGTERM if w.ready else signal.SIGQUIT)

    def _gpu_room(self, slot: int) -> bool:
        return self.resources.gpu_room(slot, self.cfg)

    # -- children -------------------------------------------------------------------------------

    def reap(self) -> None:
        for pid, status in children.reaped():
            w = self.workers.pop(pid, None)
            if w is not None:
                self._worker_exited(w, status)

    def _worker_exited(self, w: WorkerProc, status: int) -> None:
        if w.sock is not None:
            w.sock.close()
            w.sock = None
        self.done_by_exited += w.jobs_done
        self.failed_by_exited += w.jobs_failed
        how = children.describe_status(status)
        slot = self.slots.get(w.slot, Slot())
        verdict = pool.judge_exit(
            w, pool.exit_code_of(status), how, slot, self.cfg.workers.boot_attempts, time.monotonic()
        )
        w.change_phase(Phase.EXITED)
        stopping = self.state is SupervisorState.STOPPING
        self.outlets.metrics.worker_exited(w.pid, w.slot, None if stopping else verdict.reason.restart_label)
        if stopping:
            log.info("worker %d (pid %d) stopped (%s)", w.slot, w.pid, how)
            return
        self.slots[w.slot] = verdict.slot
        if verdict.expected:
            log.info("worker %d (pid %d) exited (%s%s)", w.slot, w.pid, how, f", {w.why}" if w.why else "")
            return
        self.restarts += 1
        if verdict.failed_start:
            log.error(
                "worker %d (pid %d) failed to start (%s): %s [attempt %d of %d]",
                w.slot, w.pid, how, verdict.slot.last_error, verdict.slot.boot_failures, self.cfg.workers.boot_attempts,
            )  # fmt: skip
            if verdict.give_up:
                self._give_up(w, verdict.slot)
                return
        else:
            task = w.report.task
            log.error(
                "worker %d (pid %d) died (%s)%s; restarting it",
                w.slot, w.pid, w.why or how, f" while on task {task}, which goes back to the queue" if task else "",
            )  # fmt: skip
        if verdict.backoff_s > 1:
            log.info("worker %d will restart in %.0f s", w.slot, verdict.backoff_s)

    def _give_up(self, w: WorkerProc, slot: Slot) -> None:
        """Workers that cannot start: roll back a reload, or stop with the reason (no fork storm)."""
        if pool.roll_back_on_give_up(w, self.generation, reload_pending=self.previous is not None):
            assert self.previous is not None
            log.error(
                "reload aborted: workers with the new settings cannot start (%s); keeping the previous settings",
                slot.last_error,
            )
            self.cfg = pool.roll_back(self.previous, self.cfg)
            self.previous = None
            self.generation -= 1
            self.slots[w.slot] = dataclasses.replace(slot, boot_failures=0)
            return
        log.critical(
            "giving up: worker %d failed to start %d times in a row: %s", w.slot, slot.boot_failures, slot.last_error
        )
        self.notifier.status(f"failed: {slot.last_error}")
        self.stop(graceful=False)
        self.exit_code = 1

    def spawn(self, slot: int) -> None:
        device = self.gpus.device_for(slot, self.cfg.model.device)
        w = children.fork_worker(self.cfg, slot, threads_for(self.cfg), device, self.generation, self._become_worker)
        self.workers[w.pid] = w

    def _become_worker(self) -> None:
        """In the child: drop everything that belongs to the supervisor."""
        self.wakeup.close_in_child()
        for w in self.workers.values():
            if w.sock is not None:
                w.sock.close()
        self.workers = {}
        self.notifier.close_in_child()
        self.outlets.close_in_child()

    # -- reporting ------------------------------------------------------------------------------

    def snapshot(self, gpu: bool = False) -> PoolSnapshot:
        """The pool now; with ``gpu``, each worker's GPU memory too (one NVML query)."""
        now = time.monotonic()
        gpu_mb = self.resources.gpu_memory(now) if gpu and self.gpus.count else None
        live = sorted(self.workers.values(), key=lambda w: (w.slot, w.started))
        return PoolSnapshot(
            state=self.state,
            config=os.path.realpath(self.cfg.path) if self.cfg.path else None,
            job_queue=self.cfg.broker.job_queue,
            workers_wanted=self.cfg.workers.count,
            workers=tuple(view(w, now, gpu_mb) for w in live),
            jobs_done=self.done_by_exited + sum(w.jobs_done for w in live),
            jobs_failed=self.failed_by_exited + sum(w.jobs_failed for w in live),
            restarts=self.restarts,
        )

    def _notify_progress(self, snap: PoolSnapshot) -> None:
        target = self.cfg.workers.count
        settling = self.state in (SupervisorState.STARTING, SupervisorState.RELOADING)
        if settling and pool.all_ready(self.workers.values(), target, self.generation):
            if self.state is SupervisorState.STARTING:
                log.info("all %d workers ready", target)
            else:
                log.info("reload complete: %d workers", target)
            self._change_state(SupervisorState.RUNNING)
            self.notifier.ready(snap.status_text())
        else:
            self.notifier.status(snap.status_text())
        self.notifier.watchdog(pool.heartbeats_ok(self.workers.values(), self.cfg.workers.timeout, time.monotonic()))
