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

    overhead_rounds: int = 8  # of 8 files each: 56 timed jobs per arm
    cli_files: int = 7
    scaling_jobs: int = 16
    latency_jobs: int = 20
    long_audio_s: float = 600.0
    throughput_jobs: int = 1000
    profile_s: float = 20.0
    real_rounds: int = 3  # of the 16 real clips (161 s of audio) with the real base weights
    real_scaling_passes: int = 2  # the 16 clips this many times, for 1 vs 2 workers
    vad_repeats: int = 3
    vad_recording_s: float = 600.0
    vad_ungated_non_speech: bool = True  # tone and music without the gate take minutes each
    guards_all_clips: bool = True
    engines_rounds: int = 8  # the English clips (54 s) this many times: the engines' long recording
    stages_rounds: int = 4  # the same for the engines' stage profiles (8 runs: greedy/beam × conditioning)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            overhead_rounds=2, cli_files=2, scaling_jobs=4, latency_jobs=6,
            long_audio_s=60.0, throughput_jobs=120, profile_s=5.0, real_rounds=1, real_scaling_passes=1,
            vad_repeats=1, vad_recording_s=120.0, vad_ungated_non_speech=False, guards_all_clips=False,
            engines_rounds=2, stages_rounds=1,
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


def run_direct(
    ctx: Ctx, model: str, threads: int, files: list[str], warmup: str, language: str | None = None,
    extra: tuple[str, ...] = (),
) -> Any:  # fmt: skip
    """The in-process whisper loop in its own process (bench.direct); returns its JSON report."""
    args = ["--model", model, "--threads", str(threads), "--device", ctx.device, "--warmup", warmup]
    return run_module("bench.direct", *args, *(["--language", language] if language else []), *extra, *files)


def run_module(module: str, *args: str) -> Any:
    """``python -m module args`` from the repository, in its own process; the JSON it prints."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


class DirectLoop:
    """A long-lived bench.direct --serve process: transcribe one file at a time on request."""

    def __init__(self, ctx: Ctx, model: str, threads: int, warmup: str, extra: tuple[str, ...] = ()) -> None:
        cmd = [sys.executable, "-m", "bench.direct", "--model", model, "--threads", str(threads), "--serve"]
        cmd += ["--device", ctx.device, "--warmup", warmup, *extra]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
        self._read()

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench.direct --serve exited with {self.proc.wait()}")
        return json.loads(line)

    def transcribe(self, path: str) -> tuple[float, str]:
        """(seconds inside model.transcribe, text) for one file."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(path + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        return answer["s"], answer["text"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
