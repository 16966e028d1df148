"""Section 2: jobs/s with 1 and 2 workers on a model of real *tiny* size (random, steered weights).

Arms: 1 worker with the default threads (all cores), 1 worker with 1 thread (one core's worth),
2 workers with the default threads (cores / 2 each), and 2 workers each using every core
(``workers.threads`` = cores: the oversubscription pitfall). Every job decodes the same fixed
script (see bench/checkpoints.py), so all arms do identical work. Throughput counts from the
first publish to the last completion, with warm workers.
"""

from __future__ import annotations

import subprocess

from bench import checkpoints
from bench.amqp import Producer, Queues
from bench.context import Ctx
from bench.daemon import Daemon
from bench.procmem import memory
from bench.report import Section
from devkit.clips import CLIPS, stage

GPU_SIZE = "large-v3"  # on a GPU, real-size random weights (fp16)


def gpu_memory_mb() -> dict[int, float]:
    """pid -> MiB of GPU memory, from nvidia-smi; empty without it."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(p): float(m) for p, m in (line.split(",") for line in out.splitlines() if "," in line)}


def arm(ctx: Ctx, model: str, label: str, count: int, threads: int, jobs: int) -> tuple[float, float, list]:
    """(jobs/s, seconds to READY, worker memories after the jobs) for one daemon configuration."""
    with Producer(Queues()) as prod:
        root = ctx.scratch(f"scaling-{label}")
        workers = {"count": count, "threads": threads}
        model_cfg = {"device": ctx.device, "fp16": ctx.fp16}
        with Daemon(root, prod.queues.jobs, prod.queues.results, model, model=model_cfg, workers=workers) as d:
            names = stage(d.media, len(CLIPS) - 1)  # the English clips
            ready_s = d.start()
            t0 = prod.publish({"task_id": "j-0000", "audio_path": names[0], "language": "en"})
            for i in range(1, jobs):
                prod.publish({"task_id": f"j-{i:04d}", "audio_path": names[i % len(names)], "language": "en"})
            got = prod.collect(jobs, timeout=120 + 20 * jobs)
            texts = {r.body["text"] for r in got}
            if texts != {checkpoints.SCRIPT}:
                raise RuntimeError(f"the steered model said something else: {texts}")
            mems = [memory(w.pid) for w in d.workers()]
            if ctx.fp16:
                gpu = gpu_memory_mb()
                for i, w in enumerate(d.workers()):
                    ctx.memory.add(f"{label}: worker {i + 1} GPU memory", f"{gpu.get(w.pid, float('nan')):.0f} MiB")
    return jobs / (got[-1].at - t0), ready_s, mems


def run(ctx: Ctx) -> Section:
    size = GPU_SIZE if ctx.fp16 else "tiny"
    s = Section(f"scaling ({size}-size, {ctx.device})")
    model = str(checkpoints.ensure(size))
    n, cores = ctx.sizes.scaling_jobs, ctx.cores
    arms = [
        ("1 worker, default threads", 1, 0, f"{cores} threads"),
        ("1 worker, 1 thread", 1, 1, "1 thread"),
        ("2 workers, default threads", 2, 0, f"{max(1, cores // 2)} thread(s) each"),
        ("2 workers, oversubscribed", 2, cores, f"{cores} threads each"),
    ]
    rates: dict[str, float] = {}
    for label, count, threads, what in arms:
        rate, ready_s, mems = arm(ctx, model, label.replace(" ", "-").replace(",", ""), count, threads, n)
        rates[label] = rate
        s.add(f"{label} ({what})", f"{rate:.2f} jobs/s ({1000 / rate:.0f} ms/job)")
        if label == "2 workers, default threads":
            for i, m in enumerate(mems):
                ctx.memory.add(f"{size}-size worker {i + 1} of 2: RSS / USS", f"{m.rss_mb:.0f} / {m.uss_mb:.0f} MB")
        if label == "1 worker, default threads":
            m = mems[0]
            ctx.memory.add(f"{size}-size lone worker: RSS / USS", f"{m.rss_mb:.0f} / {m.uss_mb:.0f} MB")
    speedup = rates["2 workers, default threads"] / rates["1 worker, default threads"]
    per_core = rates["2 workers, default threads"] / rates["1 worker, 1 thread"]
    over = rates["2 workers, oversubscribed"] / rates["2 workers, default threads"]
    s.add("speed-up 2 vs 1 worker (default threads)", f"{speedup:.2f}×", "≥ 1.8×", speedup >= 1.8)
    s.add("speed-up 2 workers vs 1 worker on 1 core", f"{per_core:.2f}×", "≈ 2× (linear)")
    s.add("oversubscribed / default", f"{over:.2f}×", "< 1 (the pitfall)")
    intra = rates["1 worker, default threads"] / rates["1 worker, 1 thread"]
    s.note(
        f"{n} jobs per arm (the 6 English clips round-robin, language en), {cores} cores. One worker already "
        f"runs {intra:.2f}× faster on {cores} threads than on 1, so 2 workers can gain at most "
        f"{cores / intra:.2f}× over it; against one core's worth the gain is {per_core:.2f}×."
    )
    ctx.results[s.name] = rates
    return s
