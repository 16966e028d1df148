"""Section ``real_hosts``: whisperd against what users run instead, on a host with other work.

One run, the same clips, OpenAI's real multilingual ``base`` in both engines, every arm on CPU:

* **whisperd** through the real daemon, in its default layout (``workers.count = "auto"`` when
  whisperd accepts it, the speech gate on, greedy) on faster-whisper and on openai-whisper, and
  on faster-whisper again with ``transcribe.short_window = false`` when that key exists (the
  30-second window: the same work as the direct loop);
* **direct faster-whisper loop**: what a speaches / whisper-asr-webservice worker runs, one
  ``WhisperModel`` (int8, ``cpu_threads`` = cores) calling ``model.transcribe(path,
  vad_filter=True, beam_size=1)`` file after file with its default 30-second window and Silero
  VAD (``condition_on_previous_text`` off, as in whisperd), in a process of its own;
* **Celery + openai-whisper**: the app of bench/celery_app.py, ``--pool=prefork
  --concurrency=<cores>``, RabbitMQ broker, ``rpc://`` results, torch's default threads, each
  child loading the model once (``worker_process_init``) and running ``model.transcribe(path)``.

Workloads: the real short clips of tests/data (7 English, 10 Spanish, 2-27 s) submitted at once,
and a long recording (the English clips one after another, several times). Conditions: idle,
and under a competing load of one ``python -c 'while 1: pass'`` per core started by the bench
(killed after). Every arm is started and warmed up first and stays up, so the timed passes
follow each other closely; rounds run the arms in alternating order. Rates are audio seconds
per wall second, first submission to last result. WER per clip set with whisper's normalisers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika

from bench.amqp import Producer, Queues
from bench.context import Ctx, Sizes
from bench.daemon import BROKER_URL, REPO, Daemon
from bench.engines import model_of
from bench.real import batch
from bench.report import Section
from bench.vad import ENGLISH, SPANISH, reference
from devkit.clips import CACHE, pcm
from devkit.clips import DATA_DIR as DATA
from devkit.wer import word_error_rate
from whisperd.wire import SAMPLE_RATE

# clip set -> (language of its normaliser, files); 54 s and 112 s of audio
SETS: dict[str, tuple[str, tuple[str, ...]]] = {"English": ("en", ENGLISH), "Spanish": ("es", SPANISH)}
RESULT_TIMEOUT_S = 3600.0  # a bound for one pass on a loaded machine, not a target


@dataclass
class HostSizes:
    """How much each measurement transcribes; ``quick`` is a smoke run."""

    clips_per_set: int = 0  # 0: every clip of each set
    long_rounds: int = 3  # the English clips (54 s) this many times: 2.7 minutes
    rounds: int = 1  # every arm, idle then loaded, this many times (alternating order)

    @classmethod
    def of(cls, sizes: Sizes) -> HostSizes:
        return cls(clips_per_set=3, long_rounds=1) if sizes == Sizes.quick() else cls()


@dataclass
class Workload:
    """Files transcribed as one pass, with their lengths, references and clip sets."""

    key: str
    title: str
    files: list[Path]
    durations: list[float]
    references: list[str]
    sets: dict[str, tuple[str, list[int]]]  # set -> (language, indices into files)

    @property
    def audio_s(self) -> float:
        return sum(self.durations)

    def wer(self, texts: list[str]) -> dict[str, float]:
        return {
            name: word_error_rate([(self.references[i], texts[i]) for i in idx], language)
            for name, (language, idx) in self.sets.items()
        }


def seconds_of(samples: bytes) -> float:
    return len(samples) / 2 / SAMPLE_RATE


def short_workload(sizes: HostSizes, out: Path) -> Workload:
    """The short clips of each set (the first ``clips_per_set`` of each for a smoke run)."""
    files, durations, references, sets = [], [], [], {}
    for set_name, (language, names) in SETS.items():
        chosen = names[: sizes.clips_per_set] if sizes.clips_per_set else names
        idx = []
        for name in chosen:
            idx.append(len(files))
            dest = out / f"short-{len(files):02d}{Path(name).suffix}"
            dest.write_bytes((DATA / name).read_bytes())
            files.append(dest)
            durations.append(seconds_of(pcm(DATA / name)))
            references.append(reference(name))
        sets[f"{set_name}, {len(idx)} clips"] = (language, idx)
    n = len(files)
    return Workload("short", f"short clips ({n}, {sum(durations):.0f} s)", files, durations, references, sets)


def long_workload(sizes: HostSizes, out: Path) -> Workload:
    """The English clips one after another ``long_rounds`` times, as one 16 kHz WAV (cached)."""
    path = CACHE / f"real-hosts-english-x{sizes.long_rounds}.wav"
    pieces = [pcm(DATA / name) for name in ENGLISH] * sizes.long_rounds
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(b"".join(pieces))
        tmp.replace(path)
    dest = out / "long.wav"
    dest.write_bytes(path.read_bytes())
    seconds = sum(seconds_of(p) for p in pieces)
    text = " ".join(reference(name) for name in ENGLISH * sizes.long_rounds)
    title = f"long recording ({seconds / 60:.1f} min)"
    return Workload("long", title, [dest], [seconds], [text], {"long recording (English)": ("en", [0])})


@dataclass
class Pass:
    rate: float  # audio seconds per wall second
    texts: list[str]


@dataclass
class Features:
    """What the whisperd under test accepts (another change adds both keys)."""

    short_window: bool
    auto_workers: bool

    @classmethod
    def detect(cls) -> Features:
        return cls(accepts("transcribe", "short_window", False), accepts("workers", "count", "auto"))


def accepts(section: str, key: str, value: Any) -> bool:
    """Whether whisperd's config parser takes ``[section] key = value``."""
    from whisperd.config import parse

    try:
        parse({section: {key: value}})
    except Exception:
        return False
    return True


class WhisperdArm:
    """One ``whisperd run`` in its default layout (plus ``sections``), with every workload staged."""

    def __init__(self, ctx: Ctx, key: str, label: str, engine: str, workloads: list[Workload], **sections: Any):
        from whisperd.config import TranscribeConfig, WorkersConfig

        self.key, self.label, self.engine = key, label, engine
        features = Features.detect()
        layout: dict[str, dict[str, Any]] = {
            "workers": {"count": "auto" if features.auto_workers else WorkersConfig().count},
            # bench.daemon turns the gate and the short window off (same work as whisper); back to the defaults
            "transcribe": {"vad": TranscribeConfig().vad, "short_window": TranscribeConfig().short_window},
        }
        for name, values in sections.items():
            layout.setdefault(name, {}).update(values)
        model = {"engine": engine, "device": "cpu", **({"fp16": False} if engine == "openai-whisper" else {})}
        self.prod = Producer(Queues(), heartbeat=0)  # idle for minutes while the other arms run
        self.daemon = Daemon(
            ctx.scratch(f"real-hosts-{key}"), self.prod.queues.jobs, self.prod.queues.results, model_of(engine),
            model=model, **layout,
        )  # fmt: skip
        self.names = {w.key: [self.daemon.stage(f, f.name) for f in w.files] for w in workloads}
        self.daemon.start(timeout=600)
        self.workers = len(self.daemon.workers())
        self.layout = layout

    def run(self, workload: Workload, tag: str) -> Pass:
        rate, completions = batch(self.prod, self.names[workload.key], 1, f"{self.key}-{tag}")
        return Pass(rate, [c["text"] or "" for c in completions])

    def close(self) -> None:
        try:
            self.daemon.stop()
        finally:
            self.prod.close()


class DirectArm:
    """The direct faster-whisper loop (this module's ``--direct`` mode) in a process of its own."""

    key, label, engine, workers = "direct", "direct faster-whisper loop", "faster-whisper", 1

    def __init__(self, ctx: Ctx) -> None:
        cmd = [sys.executable, "-m", "bench.real_hosts", "--direct", model_of("faster-whisper"), str(ctx.cores)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)

    def transcribe(self, files: list[Path]) -> tuple[float, list[str]]:
        """(wall seconds, texts) for the files, one after another."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([str(f) for f in files]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the direct loop exited with {self.proc.wait()}")
        answer = json.loads(line)
        return answer["s"], answer["texts"]

    def run(self, workload: Workload, tag: str) -> Pass:
        wall, texts = self.transcribe(workload.files)
        return Pass(workload.audio_s / wall, texts)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(60)


class CeleryArm:
    """A Celery prefork worker running openai-whisper (bench/celery_app.py) on a unique queue."""

    key, label, engine = "celery", "Celery prefork + openai-whisper", "openai-whisper"

    def __init__(self, ctx: Ctx) -> None:
        self.queue = f"bench-celery-{uuid.uuid4().hex[:10]}"
        self.workers = ctx.cores
        env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_CELERY_QUEUE": self.queue,
               "BENCH_CELERY_MODEL": model_of("openai-whisper")}  # fmt: skip
        cmd = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool=prefork",
               f"--concurrency={ctx.cores}", "-Q", self.queue, "-n", f"{self.queue}@%h", "--loglevel=INFO",
               "--without-gossip", "--without-mingle"]  # fmt: skip
        self.log = open(ctx.scratch("real-hosts-celery") / "celery.log", "ab")
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        from bench import celery_app

        celery_app.app.conf.broker_heartbeat = 0  # this client sits idle while the other arms run
        self.task = celery_app.transcribe
        self.threads: set[int] = set()
        self.children: set[int] = set()

    def transcribe(self, files: list[Path]) -> tuple[float, list[str]]:
        started = time.monotonic()
        pending = [self.task.apply_async((str(f),), queue=self.queue) for f in files]
        answers = []
        for p in pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Celery worker exited with {self.proc.returncode}")
            answers.append(p.get(timeout=RESULT_TIMEOUT_S))
        wall = time.monotonic() - started
        self.threads |= {a["torch_threads"] for a in answers}
        self.children |= {a["pid"] for a in answers}
        return wall, [a["text"] for a in answers]

    def run(self, workload: Workload, tag: str) -> Pass:
        wall, texts = self.transcribe(workload.files)
        return Pass(workload.audio_s / wall, texts)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)  # warm shutdown
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        finally:
            self.log.close()
            conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
            try:
                ch = conn.channel()
                ch.queue_delete(self.queue)
                ch.exchange_delete(self.queue)
            finally:
                conn.close()


Arm = WhisperdArm | DirectArm | CeleryArm


@contextmanager
def competing_load(processes: int) -> Iterator[None]:
    """``processes`` CPU-bound Python loops for the duration of the block (none for 0)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(processes)]
    try:
        if spinners:
            time.sleep(1.0)  # spinning, and the scheduler has seen them
        yield
    finally:
        for p in spinners:
            p.kill()
        for p in spinners:
            p.wait()


@dataclass
class Results:
    """Passes by (arm, workload, condition), in the order they ran."""

    passes: dict[tuple[str, str, str], list[Pass]] = field(default_factory=dict)

    def add(self, arm: str, workload: str, condition: str, p: Pass) -> None:
        self.passes.setdefault((arm, workload, condition), []).append(p)

    def rate(self, arm: str, workload: str, condition: str = "idle") -> float:
        return statistics.median(p.rate for p in self.passes[arm, workload, condition])

    def texts(self, arm: str, workload: str) -> list[str]:
        return self.passes[arm, workload, "idle"][0].texts


def start_arms(ctx: Ctx, features: Features, workloads: list[Workload]) -> list[Arm]:
    """Every arm started and warmed up (one untimed clip per worker), in the order they run."""
    arms: list[Arm] = []
    try:
        short_window = {"transcribe": {"short_window": True}} if features.short_window else {}
        arms.append(WhisperdArm(ctx, "w-fw", "whisperd faster-whisper", "faster-whisper", workloads, **short_window))
        if features.short_window:
            arms.append(WhisperdArm(ctx, "w-fw-30s", "whisperd faster-whisper, short_window = false",
                                    "faster-whisper", workloads, transcribe={"short_window": False}))  # fmt: skip
            # The direct loop's layout and work: one process on every core, the 30-second window.
            arms.append(WhisperdArm(ctx, "w-fw-1x2", f"whisperd faster-whisper, 1 worker × {ctx.cores} threads, "
                                    "short_window = false", "faster-whisper", workloads,
                                    workers={"count": 1, "threads": ctx.cores},
                                    transcribe={"short_window": False}))  # fmt: skip
        arms.append(DirectArm(ctx))
        off = {"transcribe": {"short_window": False}} if features.short_window else {}
        arms.append(WhisperdArm(ctx, "w-ow", "whisperd openai-whisper, short_window = false", "openai-whisper",
                                workloads, **off))  # fmt: skip
        if features.short_window:
            arms.append(WhisperdArm(ctx, "w-ow-short", "whisperd openai-whisper, short_window = true",
                                    "openai-whisper", workloads, transcribe={"short_window": True}))  # fmt: skip
        arms.append(CeleryArm(ctx))
        warm_up(ctx, arms, workloads[0])
    except BaseException:
        close_arms(arms)
        raise
    return arms


def warm_up(ctx: Ctx, arms: list[Arm], workload: Workload) -> None:
    """One untimed run of the workload's first clip per core in each arm: every worker has loaded
    and run its model once before anything is timed."""
    warm = Workload("warm", "warm-up", workload.files[:1] * ctx.cores, [0.0] * ctx.cores, [], {})
    for arm in arms:
        if isinstance(arm, WhisperdArm):
            arm.names["warm"] = arm.names[workload.key][:1] * ctx.cores
        arm.run(warm, "warm")


def close_arms(arms: list[Arm]) -> None:
    for arm in arms:
        try:
            arm.close()
        except Exception as e:  # the others must still stop
            print(f"real_hosts: closing {arm.label}: {e}", file=sys.stderr)


def run(ctx: Ctx) -> Section:
    s = Section("real hosts (base)")
    sizes = HostSizes.of(ctx.sizes)
    features = Features.detect()
    audio = ctx.scratch("real-hosts-audio")
    short, long = short_workload(sizes, audio), long_workload(sizes, audio)
    workloads = [short, long]
    results = Results()
    idle_load: list[str] = []
    arms = start_arms(ctx, features, workloads)
    try:
        for r in range(sizes.rounds):
            order = arms if r % 2 == 0 else arms[::-1]
            for condition in ("idle", "loaded"):
                if condition == "idle":
                    idle_load.append(" ".join(f"{x:.2f}" for x in os.getloadavg()))
                with competing_load(ctx.cores if condition == "loaded" else 0):
                    for arm in order:
                        for w in workloads:
                            results.add(arm.key, w.key, condition, arm.run(w, f"{condition}-{w.key}-r{r}"))
    finally:
        close_arms(arms)
    report(s, ctx, sizes, features, workloads, arms, results, idle_load)
    return s


def report(
    s: Section, ctx: Ctx, sizes: HostSizes, features: Features, workloads: list[Workload], arms: list[Arm],
    results: Results, idle_load: list[str],
) -> None:  # fmt: skip
    """The rows: each arm's rates idle and loaded, the goals, WER; notes on arms and load."""
    short, long = workloads
    fw_30s = "w-fw-30s" if features.short_window else "w-fw"  # without the key the default is the 30-s window
    for w in workloads:
        for arm in arms:
            idle, loaded = results.rate(arm.key, w.key), results.rate(arm.key, w.key, "loaded")
            value = f"{idle:.2f} / {loaded:.2f} s/s, loaded / idle {loaded / idle:.2f}"
            metric = f"{w.title}, idle / loaded: {arm.label}"
            if isinstance(arm, WhisperdArm):
                s.add(metric, value, "loaded / idle ≥ 0.4", loaded / idle >= 0.4)
            else:
                s.add(metric, value)
    fw, fw_off, direct = (results.rate(k, short.key) for k in ("w-fw", fw_30s, "direct"))
    label = f"{short.title}: whisperd faster-whisper, short window / 30-s window (short_window = false)"
    if features.short_window:
        s.add(label, f"{fw / fw_off:.2f}×", "≥ 2.5×", fw / fw_off >= 2.5)
    else:
        s.add(label, "n/a: whisperd has no transcribe.short_window", "≥ 2.5×", False)
    s.add(f"{short.title}: whisperd faster-whisper / direct faster-whisper loop", f"{fw / direct:.2f}×", "≥ 2×",
          fw / direct >= 2)  # fmt: skip
    same_layout = "w-fw-1x2" if features.short_window else fw_30s
    for w in workloads:
        ratio = results.rate(same_layout, w.key) / results.rate("direct", w.key)
        s.add(f"{w.title}: whisperd faster-whisper, 1 × {ctx.cores} threads, 30-s window / direct loop (same work)",
              f"{ratio:.3f}", "≥ 0.99", ratio >= 0.99)  # fmt: skip
        ratio = results.rate(fw_30s, w.key) / results.rate("direct", w.key)
        s.add(f"{w.title}: whisperd faster-whisper, default layout, 30-s window / direct loop", f"{ratio:.3f}")
    wer = {(arm.key, w.key): w.wer(results.texts(arm.key, w.key)) for arm in arms for w in workloads}
    for set_name in short.sets:
        ours, off, loop = (wer[k, short.key][set_name] for k in ("w-fw", fw_30s, "direct"))
        s.add(f"WER {set_name}: whisperd faster-whisper / 30-s window / direct loop",
              f"{ours:.1%} / {off:.1%} / {loop:.1%}", "≤ +0.5 point", ours <= min(off, loop) + 0.005)  # fmt: skip
    if features.short_window:  # openai-whisper's short window: what transcribe.short_window = "auto" decides on
        gain = results.rate("w-ow-short", short.key) / results.rate("w-ow", short.key)
        s.add(f"{short.title}: whisperd openai-whisper, short window / 30-s window", f"{gain:.2f}×", "≥ 2.5×",
              gain >= 2.5)  # fmt: skip
        for set_name in short.sets:
            ours, off = (wer[k, short.key][set_name] for k in ("w-ow-short", "w-ow"))
            s.add(f"WER {set_name}: whisperd openai-whisper, short window / 30-s window", f"{ours:.1%} / {off:.1%}",
                  "≤ +0.5 point", ours <= off + 0.005)  # fmt: skip
    for w in workloads:
        for set_name in w.sets:
            shown = " / ".join(f"{wer[arm.key, w.key][set_name]:.1%}" for arm in arms)
            s.add(f"WER {set_name}: {' / '.join(arm.label for arm in arms)}", shown)
    layout = next(a for a in arms if isinstance(a, WhisperdArm)).layout
    celery = next(a for a in arms if isinstance(a, CeleryArm))
    s.note(
        f"whisperd in its default layout: workers.count = {layout['workers']['count']!r} "
        f"({', '.join(f'{a.label}: {a.workers}' for a in arms if isinstance(a, WhisperdArm))} worker(s)), "
        f"the speech gate on, greedy; transcribe.short_window {'exists' if features.short_window else 'absent'}"
    )
    s.note(
        f"direct loop: faster-whisper int8, cpu_threads={ctx.cores}, vad_filter=True, beam 1, 30-s window; "
        f"Celery: --pool=prefork --concurrency={ctx.cores}, rpc:// results, torch threads per child "
        f"{sorted(celery.threads)}, {len(celery.children)} children served jobs"
    )
    s.note(
        f"loaded = {ctx.cores} × `python -c 'while 1: pass'` (one per core) for the whole block; "
        f"{sizes.rounds} round(s) of every arm idle then loaded; 1-min load average before each idle block: "
        f"{', '.join(idle_load)}"
    )
    ctx.results[s.name] = {
        "features": vars(features),
        "rates": {"/".join(k): [p.rate for p in v] for k, v in results.passes.items()},
        "wer": {"/".join(k): v for k, v in wer.items()},
        "texts": {"/".join(k): [p.texts for p in v] for k, v in results.passes.items()},
        "idle_load": idle_load,
    }


def direct_main(model_dir: str, threads: int) -> int:
    """``--direct``: read a JSON list of paths per line, answer {"s": wall seconds, "texts": [...]}."""
    from faster_whisper import WhisperModel

    model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads)
    for line in sys.stdin:
        started = time.monotonic()
        texts = []
        for path in json.loads(line):
            segments, _ = model.transcribe(path, beam_size=1, vad_filter=True, condition_on_previous_text=False)
            texts.append("".join(seg.text for seg in segments).strip())
        print(json.dumps({"s": time.monotonic() - started, "texts": texts}), flush=True)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="the real-hosts section's direct faster-whisper loop")
    p.add_argument("--direct", nargs=2, metavar=("MODEL_DIR", "THREADS"), required=True)
    args = p.parse_args()
    sys.exit(direct_main(args.direct[0], int(args.direct[1])))
