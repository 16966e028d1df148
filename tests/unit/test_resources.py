"""whisperd.resources: RSS measured at most once a second, the limits' actions, NVML asked at a bounded rate."""

from __future__ import annotations

import os

from whisperd import config
from whisperd.lifecycle import ExitReason
from whisperd.pool import Kill, WorkerProc
from whisperd.resources import MEMORY_CHECK_EVERY_S, ResourceWatch, measure_rss


class FakeGpus:
    count = 1

    def __init__(self) -> None:
        self.queries = 0
        self.room: dict[str | None, bool] = {}

    def process_memory_mb(self) -> dict[int, int]:
        self.queries += 1
        return {123: 900}

    def device_for(self, slot: int, setting: str) -> str | None:
        return f"cuda:{slot - 1}"

    def has_room(self, device: str | None, setting: str, model: str) -> bool:
        return self.room.get(device, True)


def _worker(pid: int = 0) -> WorkerProc:
    return WorkerProc(pid or os.getpid(), 1, None, 0, started=0.0)


def test_measure_rss_reads_the_process_and_skips_one_that_is_gone():
    me, gone = _worker(), _worker(2**22 + 12345)  # above any pid_max: no such process
    measure_rss([me, gone])
    assert me.rss_mb > 1 and gone.rss_mb == 0.0


def test_memory_actions_measure_once_a_second_and_kill_over_the_hard_limit():
    cfg = config.parse({"workers": {"hard_rss_mb": 1}})
    watch, w = ResourceWatch(FakeGpus()), _worker()  # type: ignore[arg-type]
    [kill] = watch.memory_actions([w], cfg, now=100.0)
    assert kill == Kill(w.pid, ExitReason.MEMORY_HARD_LIMIT, f"RSS {w.rss_mb:.0f} MB over workers.hard_rss_mb = 1")
    w.rss_mb = 0.0
    assert watch.memory_actions([w], cfg, now=100.0 + MEMORY_CHECK_EVERY_S / 2) == []
    assert w.rss_mb == 0.0  # not measured again within the second
    assert watch.memory_actions([w], cfg, now=100.0 + MEMORY_CHECK_EVERY_S) != []


def test_gpu_memory_is_cached_for_a_second_and_gpu_room_asks_the_slots_device():
    gpus = FakeGpus()
    watch = ResourceWatch(gpus)  # type: ignore[arg-type]
    assert watch.gpu_memory(10.0) == {123: 900} and watch.gpu_memory(10.5) == {123: 900}
    assert gpus.queries == 1
    watch.gpu_memory(11.0)
    assert gpus.queries == 2
    gpus.room["cuda:1"] = False
    cfg = config.parse({"model": {"device": "cuda"}})
    assert watch.gpu_room(1, cfg) and not watch.gpu_room(2, cfg)
