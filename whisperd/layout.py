"""How many worker processes, and how many threads each, for ``workers.count = "auto"``.

Measured on 2 cores with OpenAI's weights (docs/performance.md): two processes of one thread did
1.5x (openai-whisper) and 1.6x (faster-whisper) the work of one process of two threads on an idle
host, and kept about half of it beside two CPU-bound processes, the fair share. So "auto" runs one
single-threaded worker per core, as many as memory allows: each process holds its own model.
With a GPU it runs one worker, which gets all the cores. Imports nothing heavy: the supervisor
uses it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from whisperd import memory
from whisperd.config import Config

MEMORY_SHARE = 0.5  # of the host's (or the unit's MemoryMax=) memory: the host runs other services
TYPICAL_JOB_S = 600  # audio a worker is sized to hold while it works (longer jobs still run)
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Layout:
    count: int
    threads: int
    why: str


def _cgroup_dir() -> Path | None:
    """This process's cgroup v2 directory, or None (cgroup v1, or not mounted)."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    hierarchy, _, path = line.partition("::")
    return CGROUP_ROOT / path.lstrip("/") if hierarchy == "0" else None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def cpu_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a CPU quota (``CPUQuota=``)."""
    cores = len(os.sched_getaffinity(0))
    group = _cgroup_dir()
    while group is not None and group != CGROUP_ROOT.parent:
        quota, _, period = _read(group / "cpu.max").partition(" ")
        if quota.isdigit() and period.isdigit() and int(period):
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
        group = group.parent if group != CGROUP_ROOT else None
    return cores


def memory_mb() -> float:
    """The host's memory, or less where a cgroup limit (``MemoryMax=``) says so."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    group = _cgroup_dir()
    while group is not None and group != CGROUP_ROOT.parent:
        limit = _read(group / "memory.max")
        if limit.isdigit():
            total = min(total, int(limit) / 2**20)
        group = group.parent if group != CGROUP_ROOT else None
    return total


def worker_mb(cfg: Config) -> float:
    """What one worker holds: the runtime, the model in memory, a typical job's audio. openai-whisper
    builds fp32 weights from the fp16 checkpoint on a CPU (2x its size); CTranslate2 keeps its file's."""
    factor = 2 if cfg.model.engine == "openai-whisper" else 1
    return memory.RUNTIME_MB + factor * memory.model_disk_mb(cfg) + memory.AUDIO_MB_PER_S * TYPICAL_JOB_S


def on_gpu(cfg: Config, gpus: int) -> bool:
    device = cfg.model.device
    return device.startswith("cuda") or (device == "auto" and gpus > 0)


def choose(cfg: Config, cores: int, total_mb: float, gpus: int = 0) -> Layout:
    """``workers.count`` and ``workers.threads`` as given, with "auto" and 0 worked out."""
    count, why = cfg.workers.count, "workers.count"
    if count == "auto":
        if on_gpu(cfg, gpus):
            count, why = 1, "auto: one worker on the GPU"
        else:
            fits = max(1, int(total_mb * MEMORY_SHARE // worker_mb(cfg)))
            count = min(cores, fits)
            why = f"auto: one per core ({cores})" if count == cores else f"auto: memory for {fits} (of {cores} cores)"
    threads = cfg.workers.threads or max(1, cores // count)
    return Layout(count, threads, why)


def resolve(cfg: Config, gpus: int = 0) -> tuple[Config, Layout]:
    """``cfg`` with ``workers.count`` a number, and the layout it runs with."""
    layout = choose(cfg, cpu_cores(), memory_mb(), gpus)
    return dataclasses.replace(cfg, workers=dataclasses.replace(cfg.workers, count=layout.count)), layout
