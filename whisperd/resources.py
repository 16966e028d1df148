"""The supervisor's resource watch: each worker's RSS and GPU memory, and the memory limits.

Measuring is the only effect here (psutil reads /proc, NVML asks the driver), each at a bounded
rate so a loop pass stays cheap; the decisions are ``pool.check_memory``'s and ``Gpus.has_room``'s.
Imports nothing heavy (no torch, no CUDA context): the supervisor uses it before every fork.
"""

from __future__ import annotations

from collections.abc import Iterable

import psutil

from whisperd import pool
from whisperd.config import Config
from whisperd.gpu import Gpus
from whisperd.memory import hard_rss_limit_mb
from whisperd.pool import WorkerProc

MEMORY_CHECK_EVERY_S = 1.0
GPU_CHECK_EVERY_S = 1.0


def measure_rss(workers: Iterable[WorkerProc]) -> None:
    """Each worker's resident memory into ``rss_mb``; a worker that cannot be read keeps its last."""
    for w in list(workers):
        try:
            w.rss_mb = psutil.Process(w.pid).memory_info().rss / 2**20
        except (psutil.Error, OSError):  # OSError: no descriptor left to read /proc with (EMFILE)
            continue


class ResourceWatch:
    """What the loop asks about memory: which workers are too big, which GPU has room, who holds what."""

    def __init__(self, gpus: Gpus) -> None:
        self.gpus = gpus
        self._last_memory_check = 0.0
        self._gpu_checked, self._gpu_mb = 0.0, {}

    def memory_actions(self, workers: Iterable[WorkerProc], cfg: Config, now: float) -> list[pool.Action]:
        """Once a second: measure every worker's RSS and what the limits say to do about it."""
        if now - self._last_memory_check < MEMORY_CHECK_EVERY_S:
            return []
        self._last_memory_check = now
        workers = list(workers)
        measure_rss(workers)
        return pool.check_memory(workers, cfg.workers.max_rss_mb, hard_rss_limit_mb(cfg))

    def gpu_room(self, slot: int, cfg: Config) -> bool:
        """Whether slot's GPU has the free memory for the configured model (always on a CPU)."""
        device = self.gpus.device_for(slot, cfg.model.device)
        return self.gpus.has_room(device, cfg.model.device, cfg.model.name)

    def gpu_memory(self, now: float) -> dict[int, int]:
        """Each worker's GPU memory by pid, asked of NVML at most once a second."""
        if now - self._gpu_checked >= GPU_CHECK_EVERY_S:
            self._gpu_checked, self._gpu_mb = now, self.gpus.process_memory_mb()
        return self._gpu_mb
