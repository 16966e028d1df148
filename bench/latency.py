"""Section 3: how long things take as a user sees them.

* publish → start / → completion: one job at a time (nothing queued), warm workers, the
  shortest clip; "start" is the ``processing`` event (``events.progress``), which a worker
  publishes once the audio is decoded and transcription begins.
* start → READY=1 on the notify socket; reload 2 → 4 workers until the reload's READY=1.
* SIGTERM → exit, idle and with a 66 s job in flight (which must still complete).
"""

from __future__ import annotations

import shutil
import signal
import time

from bench.amqp import Producer, Queues
from bench.context import Ctx, fmt_s, percentile
from bench.daemon import Daemon
from bench.procmem import maps_library, memory
from bench.report import Section
from devkit.clips import DATA_DIR as DATA
from devkit.clips import FIXTURE_MODEL, SHORTEST, long_file

MODEL = str(FIXTURE_MODEL)


def job_latencies(prod: Producer, name: str, n: int, tag: str) -> tuple[list[float], list[float]]:
    """(publish→start, publish→completion) seconds for n jobs sent one after another."""
    to_start, to_done = [], []
    for i in range(n):
        t0 = prod.publish({"task_id": f"{tag}-{i:04d}", "audio_path": name})
        started = None
        while True:
            r = prod.receive(60)
            if r is None:
                raise RuntimeError(f"no completion for {tag}-{i:04d} within 60 s")
            if r.body.get("status") == "processing":
                started = r.at
            elif r.body.get("status") in ("done", "failed"):
                break
        if started is None or r.body["status"] != "done":
            raise RuntimeError(f"unexpected completion {r.body}")
        to_start.append(started - t0)
        to_done.append(r.at - t0)
    return to_start, to_done


def supervisor_rows(ctx: Ctx, d: Daemon, label: str) -> None:
    """Supervisor and fixture-worker memory of a running daemon, into the memory section."""
    sup = memory(d.pid)
    torch_mapped = maps_library(d.pid, "libtorch")
    ctx.memory.add(f"supervisor RSS ({label})", f"{sup.rss_mb:.1f} MB", "≤ 40 MB", sup.rss_mb <= 40)
    ctx.memory.add("supervisor maps libtorch", "yes" if torch_mapped else "no", "no", not torch_mapped)
    mems = [memory(w.pid) for w in d.workers()]
    rss = sum(m.rss_mb for m in mems) / len(mems)
    uss = sum(m.uss_mb for m in mems) / len(mems)
    ctx.memory.add(f"fixture worker RSS / USS (mean of {len(mems)})", f"{rss:.0f} / {uss:.0f} MB")


def run(ctx: Ctx) -> Section:
    s = Section("latency (fixture)")
    n = ctx.sizes.latency_jobs
    with Producer(Queues()) as prod:
        root = ctx.scratch("latency")
        sections = {"workers": {"count": 2}, "events": {"progress": True}, "model": {"device": ctx.device}}
        with Daemon(root, prod.queues.jobs, prod.queues.results, MODEL, **sections) as d:
            shutil.copyfile(DATA / SHORTEST, d.media / SHORTEST)
            ready_s = d.start()
            job_latencies(prod, SHORTEST, 2, "warm")  # every worker has done a job
            to_start, to_done = job_latencies(prod, SHORTEST, n, "lat")
            supervisor_rows(ctx, d, "2 workers")
            d.configure(workers={"count": 4})
            t = time.monotonic()
            d.signal(signal.SIGHUP)
            reload_s = d.wait_ready(2, 180) - t
            workers = len(d.workers())
            supervisor_rows(ctx, d, "4 workers")
            t = time.monotonic()
            d.signal(signal.SIGTERM)
            rc_idle = d.wait_exit(60)
            term_idle_s = time.monotonic() - t
    s.add("start → READY=1 (2 workers)", fmt_s(ready_s))
    for what, values in (("publish → start", to_start), ("publish → completion", to_done)):
        s.add(f"{what} p50 / p95", f"{fmt_s(percentile(values, 50))} / {fmt_s(percentile(values, 95))}")
    s.add("reload 2 → 4 workers → READY=1", fmt_s(reload_s), "4 workers", workers == 4)
    s.add("SIGTERM → exit, idle (4 workers)", f"{fmt_s(term_idle_s)} (exit {rc_idle})", "exit 0", rc_idle == 0)
    in_flight_s, rc, job_left_s, finished = sigterm_in_flight(ctx)
    s.add(
        "SIGTERM → exit, job in flight",
        f"{fmt_s(in_flight_s)} (exit {rc}; job finished {fmt_s(job_left_s)} after SIGTERM)",
        "job completes, exit 0",
        rc == 0 and finished,
    )
    s.note(f"{n} jobs one at a time on {SHORTEST} (1.98 s); start = the worker's `processing` event")
    ctx.results[s.name] = {"to_start": to_start, "to_done": to_done, "ready_s": ready_s, "reload_s": reload_s}
    return s


def sigterm_in_flight(ctx: Ctx) -> tuple[float, int, float, bool]:
    """SIGTERM while a 66 s job runs: (seconds to exit, exit code, job end after SIGTERM, completed)."""
    audio = long_file(66, ("jfk.flac",))
    with Producer(Queues()) as prod:
        root = ctx.scratch("latency-drain")
        sections = {"events": {"progress": True}, "model": {"device": ctx.device}}
        with Daemon(root, prod.queues.jobs, prod.queues.results, MODEL, **sections) as d:
            shutil.copyfile(audio, d.media / "long.wav")
            d.start()
            prod.publish({"task_id": "drain-0", "audio_path": "long.wav"})
            r = prod.receive(60)
            if r is None or r.body.get("status") != "processing":
                raise RuntimeError(f"expected the processing event, got {r}")
            t = time.monotonic()
            d.signal(signal.SIGTERM)
            done, exited = None, None
            while (done is None or exited is None) and time.monotonic() - t < 300:
                if exited is None and d.proc is not None and d.proc.poll() is not None:
                    exited = time.monotonic()
                r = prod.receive(0.02) if done is None else None
                if r is not None and r.body.get("status") in ("done", "failed"):
                    done = r
                elif done is not None:
                    time.sleep(0.01)
            rc = d.wait_exit(10)
    finished = done is not None and done.body.get("status") == "done"
    exit_s = (exited or time.monotonic()) - t
    return exit_s, rc, (done.at - t) if done else float("nan"), finished
