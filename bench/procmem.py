"""Memory of a process as the kernel reports it, and the machine's load.

RSS counts shared library pages in every process that maps them; USS is what the process alone
holds (what a kill would free), so it is the number that decides how many workers fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

MB = 2**20


@dataclass
class Memory:
    rss_mb: float
    uss_mb: float
    pss_mb: float
    peak_mb: float  # VmHWM: the highest RSS the process ever had


def memory(pid: int) -> Memory:
    full = psutil.Process(pid).memory_full_info()
    return Memory(full.rss / MB, full.uss / MB, full.pss / MB, peak_rss_mb(pid))


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maps_library(pid: int, name: str) -> bool:
    """Whether the process has a file whose name contains ``name`` mapped (e.g. libtorch)."""
    with open(f"/proc/{pid}/maps") as f:
        return any(name in line for line in f)


def loadavg() -> str:
    """The 1/5/15-minute load averages, as /proc/loadavg gives them."""
    return " ".join(open("/proc/loadavg").read().split()[:3])


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
