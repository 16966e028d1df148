"""Where each engine spends one recording: features, encoder, decoder, the rest; and what decoding
the file costs with ffmpeg (whisperd) against PyAV (faster-whisper's own ``decode_audio``).

Runs whisperd's own ``Transcriber`` (the engine a worker runs, with the ``[transcribe]`` settings
given) in this process, on audio decoded by whisperd's ``media.decode``, and times the calls the
engine makes into its model by wrapping them:

* openai-whisper: ``log_mel_spectrogram`` (features), ``model.encoder.forward`` (encoder),
  ``model.decoder.forward`` (decoder: one call per token step, the beams batched);
* faster-whisper: its ``feature_extractor``, and the CTranslate2 model's ``encode`` and
  ``generate`` (the decoder loop, in C++) and ``detect_language``.

"other" is the rest of the transcribe call (temperature fall-back bookkeeping, token filters and
beam bookkeeping in Python for openai-whisper, segment splitting). Prints one JSON object.

Usage: python -m bench.stages --engine E --model PATH --threads N [--beam 5] [--condition] FILE
       python -m bench.stages --decode FILE...   (ffmpeg vs PyAV decoding time per file)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Timers:
    """Seconds and calls per stage; a stage entered inside another is counted once, in the outer."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth = 0

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started
                self.calls[stage] += 1
                self._depth -= 1

        return timed


class _TimedCT2:
    """Stands in for faster-whisper's CTranslate2 model: times the calls, passes everything on."""

    def __init__(self, inner: Any, timers: Timers) -> None:
        self._inner = inner
        self.encode = timers.wrap("encoder", inner.encode)
        self.generate = timers.wrap("decoder", inner.generate)
        self.detect_language = timers.wrap("language detection", inner.detect_language)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def instrument(engine: Any, timers: Timers) -> None:
    if engine.name == "openai-whisper":
        module = sys.modules["whisper.transcribe"]
        module.log_mel_spectrogram = timers.wrap("features", module.log_mel_spectrogram)
        model = engine.model
        model.encoder.forward = timers.wrap("encoder", model.encoder.forward)
        model.decoder.forward = timers.wrap("decoder", model.decoder.forward)
    else:
        wm = engine.model
        wm.feature_extractor = _TimedFeatures(wm.feature_extractor, timers)
        wm.model = _TimedCT2(wm.model, timers)


class _TimedFeatures:
    def __init__(self, inner: Any, timers: Timers) -> None:
        self._inner = inner
        self._call = timers.wrap("features", inner.__call__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def decode_whisperd(path: str, threads: int) -> Any:
    from whisperd import media

    with media.open_media(str(Path(path).parent), Path(path).name, 2**31) as f:
        return media.decode(f, 4 * 3600.0, threads=threads)


def profile(args: argparse.Namespace) -> dict[str, Any]:
    from whisperd import config
    from whisperd.contract import parse_job
    from whisperd.transcriber import Transcriber

    model = {"engine": args.engine, "name": args.model, "device": "cpu", "download": False}
    cfg = config.parse({
        "model": model,
        "transcribe": {"vad": False, "beam_size": args.beam, "condition_on_previous_text": args.condition},
    })  # fmt: skip
    transcriber = Transcriber(cfg.model, args.threads)
    transcriber.warm_up()
    audio = decode_whisperd(args.file, args.threads)
    job = parse_job(json.dumps({"task_id": "profile", "audio_path": "x.wav"}).encode(), ("json",), 65536)
    timers = Timers()
    instrument(transcriber.engine, timers)
    started = time.perf_counter()
    result = transcriber.transcribe(audio, job, cfg.transcribe)
    wall = time.perf_counter() - started
    stages = dict(timers.seconds)
    stages["other"] = wall - sum(stages.values())
    return {
        "engine": args.engine, "beam": args.beam, "condition": args.condition, "audio_s": len(audio) / 16000,
        "wall_s": wall, "stages": stages, "calls": dict(timers.calls), "segments": len(result.segments),
        "text": result.text,
    }  # fmt: skip


def decode_costs(files: list[str], threads: int) -> dict[str, Any]:
    """Seconds to decode each file: whisperd's ffmpeg subprocess, and PyAV in this process."""
    from faster_whisper.audio import decode_audio

    ffmpeg, pyav = [], []
    for f in files:
        t = time.perf_counter()
        decode_whisperd(f, threads)
        ffmpeg.append(time.perf_counter() - t)
        t = time.perf_counter()
        decode_audio(f)
        pyav.append(time.perf_counter() - t)
    return {"files": files, "ffmpeg_s": ffmpeg, "pyav_s": pyav}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", default="openai-whisper", choices=("openai-whisper", "faster-whisper"))
    p.add_argument("--model", help="a .pt checkpoint (openai-whisper) or a CTranslate2 directory")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--beam", type=int, default=0, help="beam size (0: greedy)")
    p.add_argument("--condition", action="store_true", help="condition_on_previous_text = true (whisper's default)")
    p.add_argument("--decode", action="store_true", help="time decoding the files instead")
    p.add_argument("files", nargs="+")
    args = p.parse_args()
    from whisperd.engines import thread_env

    os.environ.update(thread_env(args.threads))  # before faster-whisper (PyAV, CTranslate2) is imported
    if args.decode:
        out = decode_costs(args.files, args.threads)
    else:
        args.file = args.files[0]
        out = profile(args)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
