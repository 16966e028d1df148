"""GPU facts for the supervisor through NVML (``nvidia-ml-py``, optional).

NVML is the driver's management library, not CUDA: the supervisor may use it without creating
a CUDA context, so forking workers stays safe. Without the package or a driver, every query
answers "no GPU" and whisperd runs on the CPU as usual.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("whisperd.supervisor")

# Approximate memory a worker needs per model (whisper's README "Required VRAM", plus headroom).
MODEL_GPU_MB = {"tiny": 1200, "base": 1200, "small": 2400, "medium": 5500, "large": 10500, "turbo": 6500}


def model_gpu_mb(name: str) -> int:
    if os.path.exists(name):
        return int(os.path.getsize(name) * 2 / 2**20) + 512
    family = name.split(".")[0].split("-")[0]
    return MODEL_GPU_MB.get(family, MODEL_GPU_MB["large"])


class Gpus:
    def __init__(self) -> None:
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.count = pynvml.nvmlDeviceGetCount()
        except Exception:  # no package, no driver, no device: all the same here
            self.count = 0

    def _handle(self, index: int) -> Any:
        return self._nvml.nvmlDeviceGetHandleByIndex(index)

    def free_mb(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle(index)).free / 2**20)

    def process_memory_mb(self) -> dict[int, int]:
        """pid -> MiB of GPU memory, over all devices."""
        usage: dict[int, int] = {}
        for i in range(self.count):
            try:
                procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle(i))
            except Exception:
                continue
            for p in procs:
                if p.usedGpuMemory is not None:
                    usage[p.pid] = usage.get(p.pid, 0) + int(p.usedGpuMemory / 2**20)
        return usage

    def device_for(self, slot: int, setting: str) -> str | None:
        """Spread ``device = "cuda"`` workers over the visible GPUs; other settings stand as given."""
        if setting == "cuda" and self.count > 1:
            return f"cuda:{(slot - 1) % self.count}"
        return None

    def has_room(self, device: str | None, setting: str, model: str) -> bool:
        """Whether a new worker for ``device`` fits in the GPU's free memory (always true on CPU)."""
        if not self.count or setting == "cpu":
            return True
        target = device or setting
        index = int(target.split(":")[1]) if ":" in target else 0
        try:
            return self.free_mb(index) >= model_gpu_mb(model)
        except Exception:
            return True
