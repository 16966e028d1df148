"""Section 4: peak memory on a long file, daemon vs. whisper's own.

A warm 1-worker daemon transcribes a short clip, then the clips concatenated to ten minutes;
the growth of the worker's peak RSS (VmHWM) across the long job is compared with the growth of
a direct ``model.transcribe`` process's peak across the same file. Whatever whisper itself needs
for the audio (the whole file's samples and mel spectrogram) is in both; the goal is that the
daemon adds nothing that grows with length. Supervisor and per-worker RSS/USS rows come from
the latency and scaling sections; RSS after 100 vs 1,000 jobs from the throughput section.
"""

from __future__ import annotations

import shutil

from bench.amqp import Producer, Queues
from bench.context import Ctx, run_direct
from bench.daemon import Daemon
from bench.procmem import memory
from bench.report import Section
from devkit.clips import DATA_DIR as DATA
from devkit.clips import FIXTURE_MODEL, SHORTEST, long_file

MODEL = str(FIXTURE_MODEL)


def run(ctx: Ctx) -> Section:
    s = ctx.memory
    seconds = ctx.sizes.long_audio_s
    audio = long_file(seconds)
    minutes = f"{seconds / 60:.0f}-minute"
    with Producer(Queues()) as prod:
        root = ctx.scratch("memory")
        with Daemon(root, prod.queues.jobs, prod.queues.results, MODEL, model={"device": ctx.device}) as d:
            shutil.copyfile(DATA / SHORTEST, d.media / "short.wav")
            shutil.copyfile(audio, d.media / "long.wav")
            d.start()
            prod.publish({"task_id": "short", "audio_path": "short.wav"})
            prod.collect(1, 120)
            worker = d.workers()[0].pid
            before = memory(worker)
            prod.publish({"task_id": "long", "audio_path": "long.wav"})
            long_done = prod.collect(1, 30 * seconds)[0].body
            after = memory(worker)
    direct = run_direct(ctx, MODEL, ctx.cores, [str(audio)], warmup=str(DATA / SHORTEST))
    daemon_growth = after.peak_mb - before.peak_mb
    direct_growth = direct["after"]["peak_mb"] - direct["before"]["peak_mb"]
    ok = daemon_growth <= direct_growth * 1.1 + 10
    s.add(
        f"worker peak RSS growth, {minutes} file",
        f"+{daemon_growth:.0f} MB ({before.peak_mb:.0f} → {after.peak_mb:.0f})",
        "≤ whisper's own +10 %",
        ok,
    )
    s.add(
        f"direct whisper peak RSS growth, {minutes} file",
        f"+{direct_growth:.0f} MB ({direct['before']['peak_mb']:.0f} → {direct['after']['peak_mb']:.0f})",
    )
    s.add(f"worker RSS after the {minutes} job", f"{after.rss_mb:.0f} MB (was {before.rss_mb:.0f})")
    s.note(
        f"{minutes} file = the 7 clips concatenated, {seconds:.0f} s, transcribed in {long_done['processing_s']:.0f} s "
        f"by the daemon and {direct['total_s']:.0f} s directly (the fixture model hallucinates on it: fallbacks)"
    )
    ctx.results["memory-long"] = {"daemon_before": vars(before), "daemon_after": vars(after), "direct": direct}
    return s
