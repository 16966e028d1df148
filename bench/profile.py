"""py-spy on a running worker, and where its job thread spends each job.

``py-spy record --idle --threads --format raw`` samples every thread, waiting ones included, so
the job thread's samples add up to wall time: the share of samples in each stage times the time
per job is that stage's time per job. Stages are recognised by the frames on the stack.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (stage, function, file suffix): the first whose frame is on the stack names the sample.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("model: whisper transcribe()", "transcribe", "whisper/transcribe.py"),
    ("decode: the decoder helper", "decode", "whisperd/media.py"),
    ("open + path checks", "open_media", "whisperd/media.py"),
    ("write result files (fsync)", "write", "whisperd/results.py"),
    ("completion marker (fsync)", "commit", "whisperd/results.py"),
    ("attempt counter (fsync)", "begin_attempt", "whisperd/results.py"),
    ("stored-result lookup", "lookup", "whisperd/results.py"),
    ("parse job", "parse_job", "whisperd/contract.py"),
    ("waiting for the next job (AMQP)", "take", "whisperd/deliveries.py"),
)
IDLE_LEAVES = ("select", "poll", "epoll", "wait", "sleep", "recv")


def py_spy() -> str | None:
    near = Path(sys.executable).with_name("py-spy")
    return str(near) if near.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """Start sampling ``pid`` for ``seconds`` in the background; None when py-spy is missing."""
    exe = py_spy()
    if exe is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200", "--format", "raw"]
    cmd += ["--idle", "--threads", "--nonblocking", "--full-filenames", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def frames(stack: str) -> list[tuple[str, str]]:
    """'Class.fn (path:line);...' -> [(fn, path)], outermost first."""
    out = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        out.append((name.rsplit(".", 1)[-1], where.rsplit(":", 1)[0]))
    return out


def stage_of(stack: list[tuple[str, str]]) -> str:
    for stage, fn, suffix in STAGES:
        if any(name == fn and path.endswith(suffix) for name, path in stack):
            if stage.startswith("waiting") and stack[-1][0] not in IDLE_LEAVES:
                return "other (job thread)"
            return stage
    return "other (job thread)"


def job_thread_stages(raw: Path) -> tuple[Counter, Counter]:
    """(job-thread samples by stage, I/O-thread samples: idle vs busy) from py-spy raw output."""
    jobs: Counter = Counter()
    io: Counter = Counter()
    for line in raw.read_text().splitlines():
        head, _, count = line.rpartition(" ")
        thread, _, stack = head.partition(";")
        parsed = frames(stack)
        if "jobs" in thread.split(": ", 1)[-1] or any(name == "_job_loop" for name, _ in parsed):
            jobs[stage_of(parsed)] += int(count)
        elif any(name == "_serve" for name, _ in parsed):
            leaf = parsed[-1][0] if parsed else ""
            io["idle" if any(x in leaf for x in IDLE_LEAVES) else "busy"] += int(count)
    return jobs, io


def hot_frames(raw: Path, top: int = 8) -> list[tuple[str, float]]:
    """Leaf functions of the job thread outside the model, by share of its samples."""
    leaves: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        head, _, count = line.rpartition(" ")
        thread, _, stack = head.partition(";")
        parsed = frames(stack)
        if not any(name == "_job_loop" for name, _ in parsed):
            continue
        total += int(count)
        if stage_of(parsed).startswith(("model", "waiting")):
            continue
        name, path = parsed[-1]
        leaves[f"{name} ({'/'.join(path.split('/')[-2:])})"] += int(count)
    return [(k, v / total) for k, v in leaves.most_common(top)] if total else []
