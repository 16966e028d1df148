"""Moonshot: fork workers from a template process that already holds torch and the weights.

whisperd's supervisor never imports torch; each worker imports it and loads its own copy of the
weights after the fork. The alternative measured here: a template process imports torch and
loads the model once, then forks the workers, so torch's heap and the weights stay shared
copy-on-write (nothing writes to them during inference). This is only safe while the template
has no OpenMP pool and no CUDA context, since neither survives a fork; the template checks it is
still single-threaded before forking.

``run`` launches ``python -m bench.template MODE MODEL CLIP`` for both modes, each forking two
workers that warm up and transcribe the clip, and compares their unique memory (USS).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from bench.context import Ctx
from bench.daemon import REPO
from bench.report import Section
from devkit.clips import DATA_DIR as DATA
from devkit.clips import FIXTURE_MODEL, SHORTEST


def child(model: Any, clip: str, threads: int, load: str | None, out: int) -> None:
    """A worker: (load the model,) set its threads, warm up, transcribe, report, wait to be killed."""
    os.environ.update({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    import torch
    import whisper

    torch.set_num_threads(threads)
    if load is not None:
        model = whisper.load_model(load, device="cpu")
    text = model.transcribe(clip, language="en", fp16=False)["text"].strip()
    os.write(out, (json.dumps({"pid": os.getpid(), "text": text}) + "\n").encode())
    signal.pause()


def template_main(mode: str, model_path: str, clip: str, workers: int, threads: int) -> None:
    """In the benchmark's subprocess: fork ``workers`` children in ``mode`` (after-fork | template)."""
    import psutil

    model = None
    if mode == "template":
        os.environ.update({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
        import torch
        import whisper

        torch.set_num_threads(1)  # loading runs inline: no OpenMP pool is started in the template
        model = whisper.load_model(model_path, device="cpu")
        model.eval()
        alive = psutil.Process().num_threads()
        if alive != 1 or torch.cuda.is_initialized():
            raise SystemExit(f"unsafe to fork: {alive} threads, cuda {torch.cuda.is_initialized()}")
    r, w = os.pipe()
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                child(model, clip, threads, model_path if mode == "after-fork" else None, w)
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(w)
    reports = []
    with os.fdopen(r) as f:
        for _ in range(workers):
            reports.append(json.loads(f.readline()))
    time.sleep(0.5)
    for rep in reports:
        full = psutil.Process(rep["pid"]).memory_full_info()
        rep.update(rss_mb=full.rss / 2**20, uss_mb=full.uss / 2**20, pss_mb=full.pss / 2**20)
    parent = psutil.Process().memory_full_info()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print(
        json.dumps({"workers": reports, "template_rss_mb": parent.rss / 2**20, "template_uss_mb": parent.uss / 2**20})
    )


def measure(mode: str, model: str, workers: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.template", mode, model, str(DATA / SHORTEST), str(workers), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.template {mode} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def run(ctx: Ctx) -> Section:
    from bench import checkpoints

    s = Section("template fork (moonshot, prototype)")
    threads = max(1, ctx.cores // 2)
    for label, model in (("fixture", str(FIXTURE_MODEL)), ("tiny-size", str(checkpoints.ensure("tiny")))):
        lone = measure("after-fork", model, 1, threads)["workers"][0]
        after = measure("after-fork", model, 2, threads)
        tmpl = measure("template", model, 2, threads)
        same = {w["text"] for w in tmpl["workers"]} == {w["text"] for w in after["workers"]}
        uss_after = max(w["uss_mb"] for w in after["workers"])
        uss_tmpl = max(w["uss_mb"] for w in tmpl["workers"])
        ratio = uss_tmpl / lone["uss_mb"]
        s.add(f"{label}: lone worker USS (loads after fork)", f"{lone['uss_mb']:.0f} MB (RSS {lone['rss_mb']:.0f})")
        s.add(f"{label}: each of 2 workers, load after fork", f"USS {uss_after:.0f} MB")
        s.add(
            f"{label}: each of 2 workers forked from template",
            f"USS {uss_tmpl:.0f} MB (template holds {tmpl['template_uss_mb']:.0f})",
        )
        s.add(f"{label}: extra worker USS / lone worker USS", f"{ratio:.2f}", "≤ 0.5", ratio <= 0.5)
        s.add(f"{label}: same transcript from template-forked workers", "yes" if same else "no", "yes", same)
    s.note(
        "prototype outside whisperd (bench/template.py): whisperd's supervisor and workers are unchanged; "
        "each worker warmed up and transcribed one clip before its USS was read"
    )
    return s


if __name__ == "__main__":
    template_main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
