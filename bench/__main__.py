"""``make bench`` / ``python -m bench``: run the sections, print one table, save it.

Usage: python -m bench [--quick] [--only overhead,scaling,...] [--device cpu|cuda]

Writes .cache/bench/last/{table.txt,table.md,results.json} and a log per daemon under
.cache/bench/last/run/. See bench/RESULTS.md for what each number means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import (
    diarize,
    engines,
    latency,
    memory,
    overhead,
    real,
    real_hosts,
    same_work,
    scaling,
    template,
    throughput,
    vad,
    window_profile,
)
from bench.context import Ctx, Sizes
from bench.procmem import cpu_count, loadavg
from bench.report import Section, markdown_table, notes, text_table

OUT = Path(__file__).resolve().parent.parent / ".cache" / "bench" / "last"
SECTIONS: dict[str, Callable[[Ctx], Section]] = {
    "overhead": lambda ctx: overhead.run_for_device(ctx),
    "scaling": scaling.run,
    "latency": latency.run,
    "memory": memory.run,
    "throughput": throughput.run,
    "template": template.run,
    "real": real.run,
    "vad": vad.run,
    "guards": vad.run_guards,
    "engines": engines.run,
    "real_hosts": real_hosts.run,
    "same_work": same_work.run,
    "window_profile": window_profile.run,
    "diarize": diarize.run,
}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")) / 2**20
    return f"{platform.node()}: {cpu}, {cpu_count()} cores, {mem:.0f} GiB, {platform.platform()}"


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for development (numbers are not comparable)")
    p.add_argument("--only", help=f"comma-separated sections from {','.join(SECTIONS)}")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU tables (fp16, real-size weights)")
    args = p.parse_args()
    chosen = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [x for x in chosen if x not in SECTIONS]
    if unknown:
        p.error(f"unknown section {unknown[0]!r}")
    shutil.rmtree(OUT, ignore_errors=True)
    ctx = Ctx(root=OUT / "run", sizes=Sizes.quick() if args.quick else Sizes(), device=args.device)
    started = time.monotonic()
    header = [
        f"machine: {machine()}",
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"command: python -m bench {' '.join(sys.argv[1:])}".rstrip(),
        f"load average at start: {loadavg()}",
    ]
    print("\n".join(header), flush=True)
    done: list[Section] = []
    for name in chosen:
        before, t = loadavg(), time.monotonic()
        print(f"-- {name} (load {before}) ...", flush=True)
        section = SECTIONS[name](ctx)
        section.load_before, section.load_after, section.seconds = before, loadavg(), time.monotonic() - t
        done.append(section)
        print(text_table([section]), flush=True)
    if ctx.memory.rows and not any(x is ctx.memory for x in done):
        ctx.memory.load_before, ctx.memory.load_after = header[3].split(": ")[1], loadavg()
        done.append(ctx.memory)
    header.append(f"total: {time.monotonic() - started:.0f} s; load average at end: {loadavg()}")
    table, md = text_table(done), markdown_table(done)
    print("\n" + "\n".join(header[-1:]) + "\n\n" + table + "\n\nnotes:\n" + notes(done))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "table.txt").write_text("\n".join(header) + "\n\n" + table + "\n\nnotes:\n" + notes(done) + "\n")
    (OUT / "table.md").write_text("\n".join(f"* {h}" for h in header) + "\n\n" + md + "\n\n" + notes(done) + "\n")
    (OUT / "results.json").write_text(json.dumps({"header": header, "raw": ctx.results}, indent=1, default=str))
    print(f"\nsaved {OUT}/table.txt, table.md, results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
