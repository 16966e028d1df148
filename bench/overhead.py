"""Section 1: whisperd (1 worker) vs. whisper called directly vs. the ``whisper`` CLI per file.

The daemon and the direct loop alternate in rounds on the same staged files, so a neighbour's
load on a shared machine hits both arms alike; each arm's median round counts. Daemon
throughput is measured between the first and the last completion of a round (N-1 job cycles,
each including the AMQP hand-off to the next job), so neither the publishing nor the first
job's pick-up latency is in it.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from bench.amqp import Producer, Queues
from bench.clips import FIXTURE_MODEL, SHORTEST, stage
from bench.context import Ctx, run_direct
from bench.daemon import REPO, Daemon
from bench.report import Section

WHISPER_CLI = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "whisper"


def daemon_round(prod: Producer, names: list[str], tag: str) -> tuple[float, list[dict]]:
    """Publish one job per file, wait for all; returns (jobs/s first→last, completions)."""
    for i, name in enumerate(names):
        prod.publish({"task_id": f"{tag}-{i:04d}", "audio_path": name})
    got = prod.collect(len(names), timeout=60 + 10 * len(names))
    span = got[-1].at - got[0].at
    return (len(names) - 1) / span, [r.body for r in got]


def cli_run(files: list[Path], model: str, out: Path, device: str) -> float:
    """Seconds for ``whisper FILE --model PATH`` once per file, as a shell script would do it."""
    started = time.monotonic()
    for f in files:
        cmd = [str(WHISPER_CLI), str(f), "--model", model, "--device", device, "--fp16", str(device != "cpu")]
        cmd += ["--output_dir", str(out), "--verbose", "False"]
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    return time.monotonic() - started


def run(ctx: Ctx, model: str = str(FIXTURE_MODEL), label: str = "fixture") -> Section:
    s = Section(f"overhead ({label})")
    n, rounds = ctx.sizes.overhead_jobs, ctx.sizes.overhead_rounds
    threads = ctx.cores
    direct_rates, daemon_rates, processing = [], [], []
    same_text = True
    with Producer(Queues()) as prod:
        root = ctx.scratch(f"overhead-{label}")
        d = Daemon(root, prod.queues.jobs, prod.queues.results, model, model={"device": ctx.device, "fp16": ctx.fp16})
        with d:
            names = stage(d.media, n)
            files = [str(d.media / x) for x in names]
            d.start()
            for r in range(rounds):
                direct = run_direct(ctx, model, threads, files, warmup=str(d.media / names[0]))
                direct_rates.append(n / direct["total_s"])
                rate, completions = daemon_round(prod, names, f"r{r}")
                daemon_rates.append(rate)
                processing += [c["processing_s"] for c in completions]
                texts = {c["task_id"].split("-")[1]: c["text"] for c in completions}
                same_text &= all(texts[f"{i:04d}"] == t for i, t in enumerate(direct["texts"]))
        k = min(ctx.sizes.cli_files, n)
        cli_s = cli_run([Path(f) for f in files[:k]], model, ctx.scratch(f"cli-{label}"), ctx.device)
    direct_rate, daemon_rate = statistics.median(direct_rates), statistics.median(daemon_rates)
    cli_rate = k / cli_s
    ratio = daemon_rate / direct_rate
    s.add("direct model.transcribe loop", f"{direct_rate:.2f} jobs/s ({1000 / direct_rate:.0f} ms/job)")
    s.add("whisperd, 1 worker", f"{daemon_rate:.2f} jobs/s ({1000 / daemon_rate:.0f} ms/job)")
    s.add("whisperd / direct", f"{ratio:.3f}", "≥ 0.97", ratio >= 0.97)
    s.add(f"whisper CLI per file ({k} files)", f"{cli_rate:.2f} jobs/s ({cli_s / k:.2f} s/job)")
    s.add("whisperd / CLI", f"{daemon_rate / cli_rate:.1f}×", "≥ 5×", daemon_rate / cli_rate >= 5)
    s.add("same transcripts as direct", "yes" if same_text else "no", "yes", same_text)
    handoff = 1 / daemon_rate - statistics.mean(processing)
    s.note(
        f"{n} files (the 7 clips round-robin, 2-11 s), "
        f"{rounds} interleaved rounds, median; all rounds direct {', '.join(f'{x:.2f}' for x in direct_rates)}, "
        f"whisperd {', '.join(f'{x:.2f}' for x in daemon_rates)} jobs/s. {threads} torch threads in both."
    )
    s.note(
        f"whisperd per job: {1000 * statistics.mean(processing):.0f} ms in the pipeline (open, decode, transcribe, "
        f"write, commit) + {1000 * handoff:.1f} ms between jobs (publish completion with confirm, ack, next delivery)"
    )
    ctx.results[s.name] = {
        "direct_rates": direct_rates, "daemon_rates": daemon_rates, "cli_s": cli_s, "cli_files": k,
        "processing_mean_s": statistics.mean(processing), "shortest": SHORTEST,
    }  # fmt: skip
    return s
