"""Section 8: the two engines side by side, same weights (OpenAI's ``base``), same clips, one run.

* whisperd on faster-whisper (int8, 1 worker) against a direct faster-whisper loop: the rounds
  alternate as in the real-weights section, each round's first job left out of both arms;
* whisperd on faster-whisper against whisperd on openai-whisper, on a long recording (the
  English clips of tests/data one after another, several times: distinct speech in every
  30-second window), greedy and beam 5, in audio seconds per wall second;
* WER of each engine through whisperd on the real clips (greedy);
* worker memory after the batch, and 1 vs 2 workers, per engine;
* the profile behind those ratios (``bench.stages``): what decoding a file costs whisperd (an
  ffmpeg process) and the direct loop (PyAV in-process), and where each engine spends the long
  recording (features, encoder, decoder, the rest), greedy and beam 5, with
  ``condition_on_previous_text`` off (whisperd's default) and on (whisper's).

The speech gate is off (``transcribe.vad = false``): this compares the engines, not the gates.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.amqp import Producer, Queues
from bench.context import Ctx, DirectLoop, run_module
from bench.daemon import Daemon
from bench.procmem import memory
from bench.real import REAL_WEIGHTS, alternating_rounds, batch, checkpoint, stage_real, texts_in_order
from bench.report import Section
from devkit.clips import english_speech

ENGINES = ("openai-whisper", "faster-whisper")
GPU_BATCH = 8  # model.batch_size for the batched arm (GPU runs only; faster-whisper's own example uses 16)


def ctranslate2_dir(name: str) -> str:
    run = subprocess.run([sys.executable, str(REAL_WEIGHTS), "--ct2-path", name], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"real weights unavailable: {run.stderr.strip()}")
    return run.stdout.strip()


def model_of(engine: str) -> str:
    return ctranslate2_dir("base") if engine == "faster-whisper" else checkpoint("base")


def daemon(ctx: Ctx, prod: Producer, engine: str, label: str, batch_size: int = 0, **sections: Any) -> Daemon:
    model = {"engine": engine, "device": ctx.device}
    model.update({"fp16": ctx.fp16} if engine == "openai-whisper" else {"batch_size": batch_size})
    return Daemon(ctx.scratch(label), prod.queues.jobs, prod.queues.results, model_of(engine), model=model, **sections)


def long_rate(ctx: Ctx, engine: str, recording: Path, beam: int, batch_size: int = 0) -> tuple[float, str]:
    """(audio seconds per wall second, text) for the long recording through a warm 1-worker daemon."""
    transcribe = {"vad": False, "beam_size": beam}
    label = f"engines-long-{engine}-{beam}-{batch_size}"
    with Producer(Queues()) as prod:
        with daemon(ctx, prod, engine, label, batch_size, transcribe=transcribe) as d:
            name = d.stage(recording, "long.wav")
            d.start(timeout=600)
            rate, [c] = batch(prod, [name], 1, f"long-{beam}")
    return rate, c["text"]


def run(ctx: Ctx) -> Section:
    s = Section("engines (base)")
    threads, rounds = ctx.cores, ctx.sizes.real_rounds
    fw_model = model_of("faster-whisper")
    direct_s, daemon_s, ratios = [], [], []
    inside: list[float] = []  # per job: whisperd's processing_s over the direct loop's seconds
    after: list[float] = []  # per job: the cycle past processing_s (marker, confirm, ack, next delivery)
    wer: dict[str, dict[str, float]] = {}
    rss: dict[str, Any] = {}
    rates: dict[str, tuple[float, float]] = {}
    # 1. whisperd (faster-whisper) against a direct faster-whisper loop, then 1 worker's batch rate.
    with Producer(Queues(), heartbeat=0) as prod:
        with daemon(ctx, prod, "faster-whisper", "engines-fw") as d:
            staged = stage_real(d.media)
            d.start(timeout=600)
            compute = "float16" if ctx.fp16 else "int8"  # whisperd's model.compute_type = auto
            extra = ("--engine", "faster-whisper", "--compute-type", compute)
            direct = DirectLoop(ctx, fw_model, threads, str(d.media / staged.names[0]), extra)
            for r, one in enumerate(alternating_rounds(prod, direct, d.media, staged.names, rounds)):
                direct_s.append(one.direct_s)
                daemon_s.append(one.daemon_s)
                ratios.append(one.ratio)
                inside += [c["processing_s"] - t for c, (t, _) in zip(one.completions[1:], one.direct[1:], strict=True)]
                after += [cycle - c["processing_s"] for cycle, c in zip(one.cycles, one.completions[1:], strict=True)]
                if r == 0:
                    wer["faster-whisper"] = staged.wer([c["text"] for c in one.completions])
                    wer["faster-whisper direct"] = staged.wer([text for _, text in one.direct])
            direct.close()
            clips = [str(d.media / name) for name in staged.names[1:]]  # the timed files of a round
            decoding = stages(ctx, "--decode", *clips)
    # 2. Per engine: WER (openai-whisper), memory after a batch, 1 vs 2 workers.
    for engine in ENGINES:
        one = two = 0.0
        for count in (1, 2):
            with Producer(Queues()) as prod:
                with daemon(ctx, prod, engine, f"engines-{engine}-{count}", workers={"count": count}) as d:
                    staged = stage_real(d.media)
                    d.start(timeout=600)
                    rate, completions = batch(prod, staged.names, ctx.sizes.real_scaling_passes, f"{engine}-{count}")
                    if count == 1:
                        one = rate
                        rss[engine] = memory(d.workers()[0].pid)
                        if engine == "openai-whisper":
                            wer[engine] = staged.wer(texts_in_order(completions, len(staged.names)))
                    else:
                        two = rate
        rates[engine] = (one, two)
    # 3. The long recording, greedy and beam 5, each engine.
    recording = english_speech(ctx.sizes.engines_rounds, ctx.scratch("engines-audio") / "long.wav")
    long: dict[tuple[str, int], float] = {}
    long_text: dict[tuple[str, int], str] = {}
    for beam in (0, 5):
        for engine in ENGINES:
            long[engine, beam], long_text[engine, beam] = long_rate(ctx, engine, recording, beam)
    batched = long_rate(ctx, "faster-whisper", recording, 0, GPU_BATCH)[0] if ctx.fp16 else None
    # 4. The profile: where each engine spends a long recording (a shorter one: 8 runs).
    profiled = english_speech(ctx.sizes.stages_rounds, ctx.scratch("engines-audio") / "profiled.wav")
    profiles = {
        (engine, beam, condition): stages(ctx, "--engine", engine, "--model", model_of(engine), "--beam", str(beam),
                                          *(["--condition"] if condition else []), str(profiled))
        for condition in (False, True) for beam in (0, 5) for engine in ENGINES
    }  # fmt: skip

    ratio = statistics.median(ratios)
    s.add("direct faster-whisper int8 loop, all rounds", f"{sum(direct_s):.1f} s")
    s.add("whisperd (faster-whisper int8), 1 worker, all rounds", f"{sum(daemon_s):.1f} s")
    s.add("whisperd / direct, faster-whisper (median of round ratios)", f"{ratio:.3f}", "≥ 0.97", ratio >= 0.97)
    minutes = long_minutes(recording)
    for beam, goal in ((0, 1.4), (5, 4.0)):
        label = "greedy" if beam == 0 else "beam 5"
        for engine in ENGINES:
            s.add(f"long recording ({minutes:.1f} min), {label}: whisperd {engine}", f"{long[engine, beam]:.2f} s/s")
        speedup = long["faster-whisper", beam] / long["openai-whisper", beam]
        s.add(f"faster-whisper / openai-whisper, {label}", f"{speedup:.2f}×", f"≥ {goal}×", speedup >= goal)
    if batched is not None:  # GPU: faster-whisper's batched pipeline for one long file
        s.add(
            f"long recording, greedy: faster-whisper batched ({GPU_BATCH}) / one window at a time",
            f"{batched:.2f} / {long['faster-whisper', 0]:.2f} s/s = {batched / long['faster-whisper', 0]:.2f}×",
        )
    add_profile(s, (direct_s, daemon_s, inside, after), decoding, profiles, long_minutes(profiled))
    for set_name in wer["openai-whisper"]:
        ow, fw, fd = (wer[k][set_name] for k in ("openai-whisper", "faster-whisper", "faster-whisper direct"))
        s.add(f"WER {set_name}: openai-whisper / faster-whisper (direct)", f"{ow:.1%} / {fw:.1%} ({fd:.1%})",
              "≤ +1 point", fw <= ow + 0.01)  # fmt: skip
    for engine in ENGINES:
        one, two = rates[engine]
        s.add(f"{engine}: 1 worker × {threads} threads / 2 workers", f"{one:.2f} / {two:.2f} s of audio per s")
        ctx.memory.add(f"{engine} worker (base) RSS / USS", f"{rss[engine].rss_mb:.0f} / {rss[engine].uss_mb:.0f} MB")
    s.note(
        f"{rounds} rounds of the {len(staged.names)} real clips, direct faster-whisper loop then whisperd; "
        f"per-round ratios {', '.join(f'{x:.3f}' for x in ratios)}; greedy, {threads} threads, the gate off"
    )
    s.note(f"long recording: the English clips of tests/data {ctx.sizes.engines_rounds} times ({minutes:.1f} min)")
    ctx.results[s.name] = {
        "direct_s": direct_s, "daemon_s": daemon_s, "ratios": ratios, "wer": wer,
        "long": {f"{e} beam {b}": v for (e, b), v in long.items()}, "rates": rates,
        "rss_mb": {e: m.rss_mb for e, m in rss.items()}, "decoding": decoding, "inside": inside, "after": after,
        "profiles": list(profiles.values()),
    }  # fmt: skip
    return s


def stages(ctx: Ctx, *args: str) -> dict[str, Any]:
    """bench.stages in its own process (one engine per process, as in a worker); its JSON report."""
    report = run_module("bench.stages", "--threads", str(ctx.cores), *args)
    report.pop("text", None)
    return report


def add_profile(
    s: Section, rounds: tuple[list[float], list[float], list[float], list[float]], decoding: dict[str, Any],
    profiles: dict[tuple[str, int, bool], dict[str, Any]], minutes: float,
) -> None:  # fmt: skip
    """What limits the ratios: whisperd's time over the direct loop split where the completion's
    processing_s allows (inside the job / after it), beside the decoding cost; and each engine's
    stages on a long recording."""
    direct_s, daemon_s, inside, after = rounds
    gap = statistics.median(d - x for d, x in zip(daemon_s, direct_s, strict=True))
    ffmpeg, pyav = sum(decoding["ffmpeg_s"]), sum(decoding["pyav_s"])
    n = len(decoding["files"])
    ms = 1000
    after_ms = statistics.mean(after) * ms
    s.add(
        "profile: whisperd's time over the direct loop per round (median)",
        f"{gap:.2f} s for {n} jobs = {gap / n * ms:.0f} ms per job",
    )
    per_job, decode_ms = statistics.mean(inside) * ms, (ffmpeg - pyav) / n * ms
    s.add(
        "profile: per job (mean of all rounds), whisperd over the direct loop = inside the job + after it",
        f"{per_job + after_ms:.0f} ms = {per_job:.0f} ms (processing_s over the direct call) + "
        f"{after_ms:.0f} ms (marker, confirm, ack, next delivery)",
    )
    s.add(
        "profile: of the time inside the job, decoding: ffmpeg process (whisperd) / PyAV in-process (direct loop)",
        f"{ffmpeg:.2f} / {pyav:.2f} s for {n} files = {decode_ms:.0f} ms more per job; "
        f"the rest {per_job - decode_ms:.0f} ms (attempt counter, result files; a job's own time varies by ±60 ms)",
    )
    for condition in (False, True):
        for beam in (0, 5):
            label = f"({minutes:.1f} min) {'greedy' if beam == 0 else 'beam 5'}, condition={str(condition).lower()}"
            ow, fw = (profiles[e, beam, condition] for e in ENGINES)
            for engine, p in zip(ENGINES, (ow, fw), strict=True):
                parts = " + ".join(f"{k} {v:.1f}" for k, v in p["stages"].items())
                steps = f", {p['calls'].get('decoder', 0)} decoder calls" if engine == "openai-whisper" else ""
                s.add(f"profile {label}: {engine}", f"{p['wall_s']:.1f} s = {parts}{steps}")
            ratio = ow["wall_s"] / fw["wall_s"]
            enc = ow["stages"]["encoder"] / fw["stages"]["encoder"]
            dec = ow["stages"]["decoder"] / fw["stages"]["decoder"]
            s.add(
                f"profile {label}: faster-whisper speed-up (whole / encoder / decoder)",
                f"{ratio:.2f}× / {enc:.2f}× / {dec:.2f}×",
            )


def long_minutes(path: Path) -> float:
    import wave

    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate() / 60
