"""What every section shares: the run's scratch directory, sizes, device, and the baseline runner."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.daemon import REPO
from bench.procmem import cpu_count
from bench.report import Section


@dataclass
class Sizes:
    """How much work each section does; ``quick`` shrinks everything for development."""

    overhead_jobs: int = 56
    overhead_rounds: int = 3
    cli_files: int = 7
    scaling_jobs: int = 16
    latency_jobs: int = 20
    long_audio_s: float = 600.0
    throughput_jobs: int = 1000
    profile_s: float = 20.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            overhead_jobs=14, overhead_rounds=1, cli_files=2, scaling_jobs=4, latency_jobs=6,
            long_audio_s=60.0, throughput_jobs=120, profile_s=5.0,
        )  # fmt: skip


@dataclass
class Ctx:
    root: Path
    sizes: Sizes
    device: str = "cpu"
    cores: int = field(default_factory=cpu_count)
    memory: Section = field(default_factory=lambda: Section("memory"))
    results: dict[str, Any] = field(default_factory=dict)  # raw numbers for the JSON dump

    def scratch(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def fp16(self) -> bool:
        return self.device.startswith("cuda")


def run_direct(ctx: Ctx, model: str, threads: int, files: list[str], warmup: str, language: str | None = None) -> Any:
    """The in-process whisper loop in its own process (bench.direct); returns its JSON report."""
    cmd = [sys.executable, "-m", "bench.direct", "--model", model, "--threads", str(threads)]
    cmd += ["--device", ctx.device, "--warmup", warmup, *(["--language", language] if language else []), *files]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.direct failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
