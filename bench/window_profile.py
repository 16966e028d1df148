"""Section ``window_profile``: where the short window's time goes, encoder against everything else.

The goal "short window ≥ 2.5× the 30-second window" depends on how much of a short clip's time
the encoder takes: the window shortens the encoder's input only, while token decoding, the speech
gate and the features cost about the same in both. Here whisperd's own faster-whisper engine runs
the short clips of ``real_hosts`` in one process (decoded once beforehand, 2 threads, the gate on,
greedy) with ``short_window`` on and off, in alternating rounds, and times every ``encode`` call.
``(encoder + rest) / rest`` is what any window could gain at most.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.context import Ctx, run_module
from bench.report import Section

ROUNDS = 3


def profile(threads: int, rounds: int, clips_per_set: int) -> dict[str, Any]:
    """Per window setting: [total s, encoder s, encoder calls] for each round."""
    from bench.engines import model_of
    from bench.real_hosts import HostSizes, short_workload
    from whisperd import decoder, media
    from whisperd.contract import parse_job
    from whisperd.settings import ModelConfig, TranscribeConfig
    from whisperd.transcriber import Transcriber

    workload = short_workload(HostSizes(clips_per_set=clips_per_set), Path(tempfile.mkdtemp()))
    transcriber = Transcriber(ModelConfig(engine="faster-whisper", name=model_of("faster-whisper"), device="cpu"),
                              threads, "cpu")  # fmt: skip
    transcriber.warm_up()
    decoder.shared().start()
    audios = []
    for f in workload.files:
        with media.open_media(str(f.parent), f.name, 1 << 30, "profile") as m:
            audios.append(media.decode(m, 86400, "profile", threads))
    model = transcriber.engine.model
    spent = {"encoder_s": 0.0, "calls": 0}
    encode = model.encode

    def timed_encode(features: Any) -> Any:
        started = time.monotonic()
        try:
            return encode(features)
        finally:
            spent["encoder_s"] += time.monotonic() - started
            spent["calls"] += 1

    model.encode = timed_encode
    job = parse_job(b'{"task_id": "profile", "audio_path": "x.wav"}', ("json",), 1 << 20, lambda *a: None)
    rows: dict[str, list[list[float]]] = {"short": [], "30 s": []}
    for r in range(rounds):
        for short in (True, False) if r % 2 == 0 else (False, True):
            spent.update(encoder_s=0.0, calls=0)
            started = time.monotonic()
            for audio in audios:
                transcriber.transcribe(audio, job, TranscribeConfig(short_window=short))
            total = time.monotonic() - started
            rows["short" if short else "30 s"].append([total, spent["encoder_s"], spent["calls"]])
    decoder.shared().close()
    return {"clips": len(audios), "audio_s": sum(workload.durations), "rows": rows}


def run(ctx: Ctx) -> Section:
    s = Section("window profile (base)")
    from bench.real_hosts import HostSizes

    clips_per_set = HostSizes.of(ctx.sizes).clips_per_set
    report = run_module("bench.window_profile", "--threads", str(ctx.cores), "--rounds", str(ROUNDS),
                        "--clips-per-set", str(clips_per_set))  # fmt: skip
    medians = {}
    for name, rows in report["rows"].items():
        total, encoder = (statistics.median(row[i] for row in rows) for i in (0, 1))
        medians[name] = (total, encoder)
        calls = int(rows[0][2])
        s.add(f"{report['clips']} short clips, {name} window: total / encoder / rest (s, medians)",
              f"{total:.2f} / {encoder:.2f} in {calls} calls / {total - encoder:.2f}")  # fmt: skip
    (short, short_enc), (full, full_enc) = medians["short"], medians["30 s"]
    s.add("short window / 30-s window, in one process", f"{full / short:.2f}×")
    s.add("encoder: 30-s window / short window", f"{full_enc / short_enc:.2f}×")
    s.add("at most, with a free encoder: 30-s total / short window's rest", f"{full / (short - short_enc):.2f}×")
    s.note(f"{ROUNDS} rounds alternating which setting goes first; {ctx.cores} threads, the gate on, greedy")
    ctx.results[s.name] = report
    return s


def main() -> int:
    p = argparse.ArgumentParser(description="the window_profile section's measurement, in its own process")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--clips-per-set", type=int, default=0)
    args = p.parse_args()
    print(json.dumps(profile(args.threads, args.rounds, args.clips_per_set)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
