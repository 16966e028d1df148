"""The baseline: whisper called directly, ``model.transcribe(path)`` in a loop, in its own process.

Same model file, device, thread count and transcribe options as a whisperd worker uses; the
file is decoded by whisper's own ``load_audio`` (ffmpeg), as a user calling whisper would.
Prints one JSON object: per-file seconds, texts, and the process's memory.

Usage: python -m bench.direct --model PATH --threads N [--language xx] [--warmup FILE] FILE...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--language")
    p.add_argument("--warmup", help="transcribed once, untimed, before the loop")
    p.add_argument("files", nargs="+")
    args = p.parse_args()
    os.environ.update({k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
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
    before = memory(os.getpid())
    times, texts = [], []
    for f in args.files:
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


if __name__ == "__main__":
    sys.exit(main())
