"""The baseline: whisper called directly, ``model.transcribe(path)`` in a loop, in its own process.

Same model file, device, thread count and transcribe options as a whisperd worker uses; the
file is decoded by whisper's own ``load_audio`` (ffmpeg), as a user calling whisper would.
Prints one JSON object: per-file seconds, texts, and the process's memory.

With ``--engine faster-whisper`` the model is a CTranslate2 directory and the loop is
faster-whisper's ``WhisperModel.transcribe`` (its own PyAV decoding), with whisperd's defaults
for that engine: int8 on a CPU, greedy unless ``--beam``, ``condition_on_previous_text`` off.

Usage: python -m bench.direct --model PATH --threads N [--language xx] [--warmup FILE] FILE...
       python -m bench.direct --model PATH --threads N --serve   (paths on stdin, one JSON line each)
       python -m bench.direct --engine faster-whisper --model DIR --threads N --serve [--beam 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--language")
    p.add_argument("--warmup", help="transcribed once, untimed, before the loop")
    p.add_argument("--predecoded", action="store_true", help="decode the files first: time the model alone")
    p.add_argument("--serve", action="store_true", help="transcribe each path read from stdin, answer in JSON")
    p.add_argument("--thread-ab", type=int, default=0, help="alternate N calls in the main and in a second thread")
    p.add_argument("--engine", default="openai-whisper", choices=("openai-whisper", "faster-whisper"))
    p.add_argument("--compute-type", default="int8", help="faster-whisper: CTranslate2 compute type")
    p.add_argument("--beam", type=int, default=0, help="beam size (0: greedy)")
    p.add_argument("files", nargs="*")
    args = p.parse_args()
    os.environ.update({k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    if args.engine == "faster-whisper":
        return serve_faster_whisper(args)
    import torch
    import whisper

    from bench.procmem import memory

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    model = whisper.load_model(args.model, device=args.device)
    load_s = time.monotonic() - started
    fp16 = args.device.startswith("cuda")
    opts = dict(language=args.language, fp16=fp16, verbose=None)
    if args.warmup:
        model.transcribe(args.warmup, **opts)
    if args.serve:
        return serve(model, opts)
    if args.thread_ab:
        return thread_ab(model, opts, args.files[0], args.thread_ab, args.threads)
    before = memory(os.getpid())
    times, texts = [], []
    inputs = [whisper.load_audio(f) for f in args.files] if args.predecoded else args.files
    for f in inputs:
        t = time.monotonic()
        result = model.transcribe(f, **opts)
        times.append(time.monotonic() - t)
        texts.append(result["text"].strip())
    after = memory(os.getpid())
    out = {
        "load_s": load_s,
        "times": times,
        "total_s": sum(times),
        "texts": texts,
        "before": vars(before),
        "after": vars(after),
    }
    if fp16:
        out["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    json.dump(out, sys.stdout)
    return 0


def thread_ab(model: Any, opts: dict, path: str, n: int, threads: int) -> int:
    """Same call, in blocks alternately in the main thread and in a long-lived second thread.

    A whisperd worker transcribes in its job thread (the main thread runs pika's I/O loop);
    this isolates what that placement alone costs, with everything else equal.
    """
    import queue
    import threading

    import torch
    import whisper

    audio = whisper.load_audio(path)
    todo: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()

    def job_thread() -> None:
        torch.set_num_threads(threads)  # as whisperd's Transcriber.transcribe does
        while todo.get():
            t = time.monotonic()
            model.transcribe(audio, **opts)
            done.put(time.monotonic() - t)

    worker = threading.Thread(target=job_thread, daemon=True)
    worker.start()
    main_s, thread_s = [], []
    block = max(1, n // 4)
    for b in range(2 * (n // block) + 1):  # blocks: main, thread, main, ... (main's first call is a warm-up)
        for _ in range(block):
            if b % 2 == 0:
                t = time.monotonic()
                model.transcribe(audio, **opts)
                main_s.append(time.monotonic() - t)
            else:
                todo.put(True)
                thread_s.append(done.get())
    main_s = main_s[1:]
    todo.put(False)
    worker.join()  # a torch thread still running at interpreter exit aborts the process
    print(json.dumps({"main": main_s, "thread": thread_s}))
    return 0


def serve(model: Any, opts: dict) -> int:
    """Lock-step mode: the benchmark alternates single files between this loop and the daemon."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        t = time.monotonic()
        result = model.transcribe(line.strip(), **opts)
        print(json.dumps({"s": time.monotonic() - t, "text": result["text"].strip()}), flush=True)
    return 0


def serve_faster_whisper(args: argparse.Namespace) -> int:
    """``--serve`` for faster-whisper: the same lock-step protocol."""
    from faster_whisper import WhisperModel

    model = WhisperModel(args.model, device=args.device, compute_type=args.compute_type, cpu_threads=args.threads)
    beam = args.beam or 1
    opts = dict(language=args.language, beam_size=beam, best_of=beam if args.beam else 5,
                condition_on_previous_text=False)  # fmt: skip

    def transcribe(path: str) -> str:
        segments, _ = model.transcribe(path, **opts)
        return "".join(s.text for s in segments).strip()

    if args.warmup:
        transcribe(args.warmup)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        t = time.monotonic()
        text = transcribe(line.strip())
        print(json.dumps({"s": time.monotonic() - t, "text": text}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
