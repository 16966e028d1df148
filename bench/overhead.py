"""Section 1: whisperd (1 worker) vs. whisper called directly vs. the ``whisper`` CLI per file.

The daemon and a long-lived direct loop (bench.direct --serve) alternate in short rounds of 8
files, so a neighbour's load on a shared machine hits both arms alike. With one worker and
prefetch 1 the jobs complete in order, and the time between two completions is one job's whole
cycle (pipeline + AMQP hand-off to the next job); each round's first job only measures pick-up
latency, so it is left out of both arms. The headline ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from bench.amqp import Producer, Queues
from bench.context import Ctx, DirectLoop
from bench.daemon import REPO, Daemon
from bench.report import Section
from devkit.clips import CLIPS, FIXTURE_MODEL, stage

WHISPER_CLI = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "whisper"


def daemon_round(
    prod: Producer, names: list[str], tag: str, timeout: float | None = None
) -> tuple[list[float], list[dict]]:
    """Publish one job per file, wait for all; returns (job cycle seconds, completions).

    One worker with prefetch 1 takes the jobs in order, so the time from completion i-1 to
    completion i is job i's whole cycle; job 0 has none (its pick-up latency is not throughput).
    """
    for i, name in enumerate(names):
        prod.publish({"task_id": f"{tag}-{i:04d}", "audio_path": name})
    got = prod.collect(len(names), timeout=timeout or 60 + 10 * len(names))
    order = [int(r.body["task_id"].rsplit("-", 1)[1]) for r in got]
    if order != sorted(order):
        raise RuntimeError("completions came out of order; per-job cycles are not meaningful")
    return [b.at - a.at for a, b in zip(got, got[1:], strict=False)], [r.body for r in got]


def cli_run(files: list[Path], model: str, out: Path, device: str) -> float:
    """Seconds for ``whisper FILE --model PATH`` once per file, as a shell script would do it."""
    started = time.monotonic()
    for f in files:
        cmd = [str(WHISPER_CLI), str(f), "--model", model, "--device", device, "--fp16", str(device != "cpu")]
        cmd += ["--output_dir", str(out), "--verbose", "False"]
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    return time.monotonic() - started


def run_for_device(ctx: Ctx) -> Section:
    """The fixture model on the CPU; on a GPU, real-size random weights in fp16 (bench/checkpoints.py)."""
    if not ctx.fp16:
        return run(ctx)
    from bench import checkpoints
    from bench.scaling import GPU_SIZE

    return run(ctx, str(checkpoints.ensure(GPU_SIZE)), f"{GPU_SIZE}-size")


def run(ctx: Ctx, model: str = str(FIXTURE_MODEL), label: str = "fixture") -> Section:
    s = Section(f"overhead ({label})")
    per_round, rounds = len(CLIPS) + 1, ctx.sizes.overhead_rounds
    threads = ctx.cores
    direct_rates, daemon_rates, processing = [], [], []
    by_ext: dict[str, list[float]] = {}  # extension -> [direct seconds, whisperd seconds]
    same_text = True
    with Producer(Queues()) as prod:
        root = ctx.scratch(f"overhead-{label}")
        d = Daemon(root, prod.queues.jobs, prod.queues.results, model, model={"device": ctx.device, "fp16": ctx.fp16})
        with d:
            names = stage(d.media, per_round * rounds)
            d.start()
            direct = DirectLoop(ctx, model, threads, warmup=str(d.media / names[0]))
            for r in range(rounds):
                batch = names[r * per_round : (r + 1) * per_round]
                answers = [direct.transcribe(str(d.media / name)) for name in batch]
                cycles, completions = daemon_round(prod, batch, f"r{r}")
                # job 0 of a round is left out of both arms: its pick-up latency is not throughput
                direct_s = [t for t, _ in answers[1:]]
                direct_rates.append(len(direct_s) / sum(direct_s))
                daemon_rates.append(len(cycles) / sum(cycles))
                for name, t_direct, t_daemon in zip(batch[1:], direct_s, cycles, strict=True):
                    acc = by_ext.setdefault(Path(name).suffix, [0.0, 0.0])
                    acc[0] += t_direct
                    acc[1] += t_daemon
                processing += [c["processing_s"] for c in completions]
                same_text &= [c["text"] for c in completions] == [text for _, text in answers]
            direct.close()
        k = min(ctx.sizes.cli_files, len(names))
        cli_s = cli_run([d.media / x for x in names[:k]], model, ctx.scratch(f"cli-{label}"), ctx.device)
    timed = rounds * (per_round - 1)
    direct_rate, daemon_rate = statistics.median(direct_rates), statistics.median(daemon_rates)
    cli_rate = k / cli_s
    # Median of per-round ratios: a burst of a neighbour's load spoils a round, not the result.
    round_ratios = [a / b for a, b in zip(daemon_rates, direct_rates, strict=True)]
    ratio = statistics.median(round_ratios)
    s.add("direct model.transcribe loop (median round)", f"{direct_rate:.2f} jobs/s ({1000 / direct_rate:.0f} ms/job)")
    s.add("whisperd, 1 worker (median round)", f"{daemon_rate:.2f} jobs/s ({1000 / daemon_rate:.0f} ms/job)")
    s.add("whisperd / direct (median of round ratios)", f"{ratio:.3f}", "≥ 0.97", ratio >= 0.97)
    total_direct = sum(v[0] for v in by_ext.values())
    total_daemon = sum(v[1] for v in by_ext.values())
    s.add("  ratio of total times, all files", f"{total_direct / total_daemon:.3f}")
    for ext, (t_direct, t_daemon) in sorted(by_ext.items()):
        s.add(f"  ratio of total times, {ext} files only", f"{t_direct / t_daemon:.3f}")
    s.add(f"whisper CLI per file ({k} files)", f"{cli_rate:.2f} jobs/s ({cli_s / k:.2f} s/job)")
    s.add("whisperd / CLI", f"{daemon_rate / cli_rate:.1f}×", "≥ 5×", daemon_rate / cli_rate >= 5)
    s.add("same transcripts as direct", "yes" if same_text else "no", "yes", same_text)
    handoff = total_daemon / timed - statistics.mean(processing)
    per_round_ratios = ", ".join(f"{x:.2f}" for x in round_ratios)
    s.note(
        f"{rounds} rounds of {per_round} files (the 7 clips, 2-11 s, + jfk again), alternating: the direct loop "
        f"does a round, then whisperd; {timed} timed jobs per arm (each round's first is pick-up, not throughput). "
        f"{threads} torch threads in both. Per-round ratios: {per_round_ratios}"
    )
    s.note(
        f"whisperd per job: {1000 * statistics.mean(processing):.0f} ms in the pipeline (open, decode, transcribe, "
        f"write, commit) + {1000 * handoff:.1f} ms between jobs (publish completion with confirm, ack, next delivery)"
    )
    ctx.results[s.name] = {
        "direct_rates": direct_rates, "daemon_rates": daemon_rates, "cli_s": cli_s, "cli_files": k,
        "processing_mean_s": statistics.mean(processing), "by_ext": by_ext,
    }  # fmt: skip
    return s
