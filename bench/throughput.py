"""Section 5: 1,000 tiny jobs through one worker, where the time per job goes, and RSS drift.

The jobs are published before the daemon starts, so the worker never waits for a producer;
throughput counts between the first and the last completion. The same clip transcribed by the
model alone (pre-decoded audio, same process set-up) gives the model's share; the rest is the
daemon's: decode, checks, result files, AMQP. py-spy samples the worker for a while in the
middle of the run and splits each job into stages (bench/profile.py).
"""

from __future__ import annotations

import shutil
import statistics

from bench import profile
from bench.amqp import Producer, Queues
from bench.context import Ctx, run_direct
from bench.daemon import Daemon
from bench.procmem import memory
from bench.report import Section
from devkit.clips import DATA_DIR as DATA
from devkit.clips import FIXTURE_MODEL, SHORTEST

MODEL = str(FIXTURE_MODEL)


def run(ctx: Ctx) -> Section:
    s = Section("throughput (fixture)")
    n = ctx.sizes.throughput_jobs
    first_sample, profile_at = max(1, n // 10), max(2, n // 5)
    raw = ctx.scratch("throughput") / "py-spy.raw"
    mem_at: dict[int, float] = {}
    spy = None
    with Producer(Queues()) as prod:
        root = ctx.scratch("throughput")
        with Daemon(root, prod.queues.jobs, prod.queues.results, MODEL, model={"device": ctx.device}) as d:
            shutil.copyfile(DATA / SHORTEST, d.media / "tiny.wav")
            for i in range(n):
                prod.publish({"task_id": f"t-{i:05d}", "audio_path": "tiny.wav"})
            d.start()
            worker = d.workers()[0].pid
            got = []
            while len(got) < n:
                got += prod.collect(1, 120)
                if len(got) in (first_sample, n):
                    mem_at[len(got)] = memory(worker).rss_mb
                if len(got) == profile_at:
                    spy = profile.record(worker, ctx.sizes.profile_s, raw)
            spy_err = spy.communicate()[1].decode(errors="replace") if spy else "py-spy not installed"
    span = got[-1].at - got[0].at
    rate = (n - 1) / span
    cycle_ms = 1000 / rate
    processing_ms = 1000 * statistics.mean(r.body["processing_s"] for r in got)
    clip = str(DATA / SHORTEST)
    model = run_direct(ctx, MODEL, ctx.cores, [clip] * 20, clip, extra=("--predecoded",))
    model_ms = 1000 * statistics.median(model["times"])
    ab = run_direct(ctx, MODEL, ctx.cores, [clip], clip, extra=("--thread-ab", "16"))
    main_ms, thread_ms = (1000 * statistics.median(ab[k]) for k in ("main", "thread"))
    s.add(f"{n} jobs, 1 worker", f"{rate:.2f} jobs/s ({cycle_ms:.0f} ms/job)")
    s.add("model alone (transcribe of decoded audio)", f"{model_ms:.0f} ms/job")
    s.add("daemon time per job outside the model", f"{cycle_ms - model_ms:.0f} ms ({1 - model_ms / cycle_ms:.0%})")
    s.add("  of which between jobs (AMQP hand-off)", f"{cycle_ms - processing_ms:.1f} ms")
    s.add(
        "model in a second thread vs main thread",
        f"{thread_ms:.0f} vs {main_ms:.0f} ms ({thread_ms / main_ms:.2f}×)",
        "≈ 1 (whisperd transcribes in its job thread)",
    )
    growth = mem_at[n] / mem_at[first_sample] - 1
    ctx.memory.add(
        f"worker RSS after {first_sample} → {n} jobs",
        f"{mem_at[first_sample]:.0f} → {mem_at[n]:.0f} MB ({growth:+.1%})",
        "within 10 %",
        abs(growth) <= 0.10,
    )
    if spy is not None and raw.exists():
        jobs, io = profile.job_thread_stages(raw)
        total = sum(jobs.values())
        for stage, count in jobs.most_common():
            s.add(f"  py-spy: {stage}", f"{count / total * cycle_ms:.1f} ms/job ({count / total:.1%})")
        busy = io["busy"] / max(1, sum(io.values()))
        s.note(f"I/O thread (pika) busy {busy:.1%} of the time")
        hot = ", ".join(f"{name} {share:.1%}" for name, share in profile.hot_frames(raw))
        s.note(f"hottest job-thread frames outside the model: {hot}")
        s.note(f"py-spy sampled the worker for {ctx.sizes.profile_s:.0f} s from job {profile_at} on ({total} samples)")
    else:
        s.note(f"no profile: {spy_err.strip()[-300:]}")
    s.note(f"{SHORTEST} (1.98 s) {n} times; model-alone time is the median of 20 in a separate process")
    ctx.results[s.name] = {"rate": rate, "processing_ms": processing_ms, "model_ms": model_ms, "mem_at": mem_at}
    return s
