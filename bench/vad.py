"""Sections ``vad`` and ``guards``: the speech gate and Whisper's hallucination guards, with OpenAI's
real ``base`` weights through the real daemon.

``vad``: two 1-worker daemons on the same model, gate on (the default) and off (``transcribe.vad
= false``), take the same files in turn, so a neighbour's load hits both alike. Time is the
completion's ``processing_s`` (decode + gate + Whisper + result files). Files: 60 s of digital
silence; 30 s each of a 440 Hz tone, pink noise and synthesised music; real clips alone and
followed by 60 s of silence; two 10-minute recordings (the Spanish clips, the English clips)
with 5-30 s of silence between clips, scored by WER against the clips' references in order.

``guards``: each guard setting as per-job options, on the real clips through the gate (accuracy
must not suffer) and on the hallucination set without the gate, where the guards are all there
is: silence, speech followed by silence, a breathy clip with long pauses, pink noise.
"""

from __future__ import annotations

import importlib.util
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.amqp import Producer, Queues
from bench.context import Ctx, fmt_s
from bench.daemon import Daemon
from bench.procmem import memory, reset_peak
from bench.report import Section
from devkit import testaudio
from devkit.clips import DATA_DIR as DATA
from devkit.clips import REPO
from devkit.wer import word_error_rate, word_errors

SPANISH = (*(f"fleurs_es_{i:03d}.ogg" for i in range(8)), "mls_es_13697_11991_000000.opus", "picovoice_test_es.wav")
ENGLISH = (
    "jfk.flac", "librispeech_1089-134686-0001.wav", "librispeech_2830-3980-0043.wav",
    "librispeech_4507-16021-0012.wav", "librispeech_8455-210777-0068.wav", "picovoice_test_en.wav",
    "mfa_acoustic_corpus.wav",
)  # fmt: skip
BREATHS = "mfa_breaths_en.flac"  # three words, breaths, pauses up to 2.4 s


def reference(name: str) -> str:
    return (DATA / name).with_suffix(".txt").read_text(encoding="utf-8").strip()


def base_checkpoint() -> str:
    """OpenAI's ``base`` as an openai-whisper checkpoint, built (or reused) by the tests' builder."""
    path = REPO / "tests" / "fixtures" / "real_weights.py"
    spec = importlib.util.spec_from_file_location("real_weights", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_weights"] = module
    spec.loader.exec_module(module)
    return str(module.ensure(log=lambda *a: None).checkpoint("base"))


@dataclass
class Arm:
    """One daemon and its producer: ``run`` publishes a job and waits for its completion."""

    name: str
    daemon: Daemon
    producer: Producer
    peers: list[Producer] = field(default_factory=list)
    count: int = 0

    def run(self, audio_path: str, timeout: float = 3600, **options: Any) -> dict[str, Any]:
        """The job's completion, plus ``cpu_s``: the CPU seconds its worker spent meanwhile (a
        neighbour's load stretches wall time, much less CPU time). The peers' connections keep
        their heartbeats going while it waits."""
        self.count += 1
        worker = psutil.Process(self.worker_pid)
        cpu = sum(worker.cpu_times()[:2])
        self.producer.publish({"task_id": f"{self.name}-{self.count:04d}", "audio_path": audio_path, **options})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.producer.receive(1.0)
            for peer in self.peers:
                peer.conn.process_data_events(0)
            if got is not None and got.body.get("status") == "done":
                return {**got.body, "cpu_s": round(sum(worker.cpu_times()[:2]) - cpu, 3)}
            if got is not None and got.body.get("status") == "failed":
                raise RuntimeError(f"job failed: {got.body}")
        raise RuntimeError(f"no completion within {timeout:.0f} s")

    @property
    def worker_pid(self) -> int:
        return self.daemon.workers()[0].pid


class Arms:
    """Daemons with ``base``, gate on and/or off, started together and stopped together."""

    def __init__(self, ctx: Ctx, model: str, name: str, gates: tuple[bool, ...] = (True, False)) -> None:
        self.arms: dict[bool, Arm] = {}
        self._ctx, self._model, self._name, self._gates = ctx, model, name, gates

    def __enter__(self) -> Arms:
        for gate in self._gates:
            label = "on" if gate else "off"
            prod = Producer(Queues())
            root = self._ctx.scratch(f"{self._name}-gate-{label}")
            d = Daemon(root, prod.queues.jobs, prod.queues.results, self._model, transcribe={"vad": gate})
            self.arms[gate] = Arm(label, d, prod)
            try:
                d.start(timeout=600)
            except BaseException:
                self.__exit__()
                raise
        for arm in self.arms.values():
            arm.peers = [other.producer for other in self.arms.values() if other is not arm]
        return self

    def __exit__(self, *exc: object) -> None:
        for arm in self.arms.values():
            arm.daemon.stop()
        for arm in self.arms.values():
            try:
                arm.producer.close()
            except Exception as e:  # a lost connection must not keep the other queues
                print(f"bench: closing {arm.producer.queues.prefix}: {e!r}", file=sys.stderr)

    def stage(self, name: str, audio: np.ndarray | None = None) -> str:
        """Put a file into every daemon's media_root: ``audio`` as WAV, or tests/data/``name``."""
        for arm in self.arms.values():
            if audio is not None:
                testaudio.write_wav(arm.daemon.media / name, audio)
            else:
                arm.daemon.stage(DATA / name, name)
        return name


def words(completion: dict[str, Any]) -> int:
    return len(completion["text"].split())


def segments(completion: dict[str, Any]) -> list[dict[str, Any]]:
    """The segments of a completion's json result."""
    return json.loads(Path(completion["results"]["json"]).read_text())["segments"]


def ratios(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[float, float]:
    """Median over the pairs of first / second: wall time (processing_s), then worker CPU time."""
    wall = statistics.median(a["processing_s"] / b["processing_s"] for a, b in pairs)
    return wall, statistics.median(a["cpu_s"] / max(b["cpu_s"], 0.01) for a, b in pairs)


def ten_minute_recording(names: tuple[str, ...], seconds: float, seed: int) -> tuple[np.ndarray, str]:
    """The clips in turn (repeated as needed), each followed by 5-30 s of silence (seeded), cut to
    whole clips and padded with silence to ``seconds``; returns the audio and its reference text."""
    rng = random.Random(seed)
    clips, gaps, total = [], [], 0.0
    lengths = {n: len(testaudio.load(DATA / n)) / testaudio.SAMPLE_RATE for n in names}
    while True:
        name, gap = names[len(clips) % len(names)], rng.uniform(5.0, 30.0)
        if total + lengths[name] + gap > seconds:
            break
        clips.append(name)
        gaps.append(gap)
        total += lengths[name] + gap
    gaps[-1] += seconds - total
    audio, _ = testaudio.recording([DATA / n for n in clips], gaps)
    return audio, " ".join(reference(n) for n in clips)


def run(ctx: Ctx) -> Section:
    s = Section("vad (base, cpu)")
    sizes = ctx.sizes
    model = base_checkpoint()
    raw: dict[str, Any] = {}
    with Arms(ctx, model, "vad") as arms:
        on, off = arms.arms[True], arms.arms[False]
        for arm in (on, off):  # the first job of a worker pays one-time costs (the gate's model, caches)
            arm.run(arms.stage("warm.wav", testaudio.load(DATA / "jfk.flac")))

        # Silence: the goal's pair, alternated and repeated.
        quiet = arms.stage("silence.wav", testaudio.silence(60))
        pairs = [(on.run(quiet), off.run(quiet)) for _ in range(sizes.vad_repeats)]
        t_on = statistics.median(a["processing_s"] for a, _ in pairs)
        t_off = statistics.median(b["processing_s"] for _, b in pairs)
        wall, cpu = ratios(pairs)
        empty = all(a["text"] == "" and a["speech_s"] == 0 and not segments(a) for a, _ in pairs)
        s.add("60 s silence, gate on: text / time", f"{pairs[0][0]['text']!r} / {fmt_s(t_on)}", '""', empty)
        s.add("60 s silence, gate off: text / time", f"{pairs[0][1]['text']!r} / {fmt_s(t_off)}")
        s.add("60 s silence: time on / off (CPU time)", f"{wall:.1%} ({cpu:.1%})", "≤ 5 %", wall <= 0.05)
        raw["silence"] = pairs

        # Tone, pink noise, music: no words with the gate; without it unless --quick (minutes each).
        for kind in ("tone", "pink_noise", "music"):
            name = arms.stage(f"{kind}.wav", testaudio.non_speech(kind, 30))
            gated = on.run(name)
            s.add(f"30 s {kind}, gate on: words / time", f"{words(gated)} / {fmt_s(gated['processing_s'])}", "0 words",
                  words(gated) == 0 and gated["speech_s"] == 0 and not segments(gated))  # fmt: skip
            raw[kind] = [gated]
            if sizes.vad_ungated_non_speech:
                plain = off.run(name)
                s.add(f"30 s {kind}, gate off: words / time (CPU)",
                      f"{words(plain)} / {fmt_s(plain['processing_s'])} ({plain['cpu_s']:.0f} CPU-s)")  # fmt: skip
                raw[kind].append(plain)

        # Speech, then 60 s of silence: the same text as the speech alone, at most 1.3x its time.
        for clip in ("picovoice_test_es.wav", "jfk.flac"):
            alone = arms.stage(clip)
            then = arms.stage(f"then-silence-{Path(clip).stem}.wav",
                              np.concatenate([testaudio.load(DATA / clip), testaudio.silence(60)]))  # fmt: skip
            runs = [(on.run(then), on.run(alone)) for _ in range(sizes.vad_repeats)]
            same = all(a["text"] == b["text"] for a, b in runs)
            wall, cpu = ratios(runs)
            s.add(f"{clip} + 60 s silence, gate on: same text as alone", "yes" if same else "no", "yes", same)
            s.add(f"{clip} + 60 s silence, gate on: time / alone (CPU)", f"{wall:.2f}× ({cpu:.2f}×)", "≤ 1.3×",
                  wall <= 1.3)  # fmt: skip
            plain_then, plain_alone = off.run(then), off.run(alone)
            wall, cpu = ratios([(plain_then, plain_alone)])
            extra = words(plain_then) - words(plain_alone)
            s.add(f"{clip} + 60 s silence, gate off: extra words / time vs alone (CPU)",
                  f"{extra:+d} / {wall:.2f}× ({cpu:.2f}×)")  # fmt: skip
            raw[clip] = {"gate_on": runs, "gate_off": [plain_alone, plain_then]}

        # Ten-minute recordings of real clips separated by 5-30 s of silence.
        for language, names, seed in (("es", SPANISH, 1), ("en", ENGLISH, 2)):
            audio, ref = ten_minute_recording(names, sizes.vad_recording_s, seed)
            name = arms.stage(f"recording-{language}.wav", audio)
            minutes = f"{len(audio) / testaudio.SAMPLE_RATE / 60:.0f}-min {language} recording"
            result = {}
            for arm in (on, off):
                reset_peak(arm.worker_pid)
                before = memory(arm.worker_pid)
                done = arm.run(name)
                after = memory(arm.worker_pid)
                wer = word_error_rate([(ref, done["text"])], language)
                result[arm.name] = (done, wer, after.peak_mb - before.rss_mb)
            (d_on, wer_on, peak_on), (d_off, wer_off, peak_off) = result["on"], result["off"]
            conditioned = on.run(name, condition_on_previous_text=True)  # whisper's default, for the guards
            wer_conditioned = word_error_rate([(ref, conditioned["text"])], language)
            speedup, cpu = ratios([(d_off, d_on)])
            s.add(f"{minutes}: WER on / off", f"{wer_on:.1%} / {wer_off:.1%}", "on ≤ off", wer_on <= wer_off)
            s.add(f"{minutes}: time on / off",
                  f"{fmt_s(d_on['processing_s'])} / {fmt_s(d_off['processing_s'])}: {speedup:.1f}× faster "
                  f"({cpu:.1f}× less CPU)", "≥ 2× faster", speedup >= 2)  # fmt: skip
            s.add(f"{minutes}: gate on, condition_on_previous_text=true: WER / time",
                  f"{wer_conditioned:.1%} / {fmt_s(conditioned['processing_s'])}")  # fmt: skip
            result["conditioned"] = (conditioned, wer_conditioned, 0.0)
            s.add(f"{minutes}: speech_s / language on, off",
                  f"{d_on['speech_s']:.0f} s / {d_on['language']}, {d_off['language']}")  # fmt: skip
            s.add(f"{minutes}: worker peak RSS above its RSS before, on / off", f"+{peak_on:.0f} / +{peak_off:.0f} MB")
            raw[f"recording-{language}"] = {"reference": ref, **result}
        for arm in (on, off):
            m = memory(arm.worker_pid)
            s.add(f"base worker RSS / USS after the runs, gate {arm.name}", f"{m.rss_mb:.0f} / {m.uss_mb:.0f} MB")
    s.note(
        f"two 1-worker daemons with OpenAI's base ({ctx.cores} threads), gate on and off, alternating; time = the "
        f"completion's processing_s (decode + gate + Whisper + files), median of {sizes.vad_repeats} where repeated"
    )
    ctx.results[s.name] = raw
    return s


# Guard settings compared, as per-job options (word_timestamps where the guard needs it).
GUARD_SETTINGS: dict[str, dict[str, Any]] = {
    "whisper's defaults": {},
    "condition_on_previous_text=false": {"condition_on_previous_text": False},
    "no_speech_threshold=0.4": {"no_speech_threshold": 0.4},
    "words, whisper's defaults": {"word_timestamps": True},
    "words, hallucination_silence_threshold=2": {"word_timestamps": True, "hallucination_silence_threshold": 2.0},
}
WHISPER_DEFAULTS = {"condition_on_previous_text": True, "no_speech_threshold": 0.6, "compression_ratio_threshold": 2.4,
                    "hallucination_silence_threshold": 0}  # fmt: skip


def word_errors_of(ref: str, hyp: str, language: str) -> int:
    """Substitutions + deletions + insertions after whisper's normaliser for the language."""
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    normalise = EnglishTextNormalizer() if language == "en" else BasicTextNormalizer()
    return word_errors(normalise(ref).split(), normalise(hyp).split())


def run_guards(ctx: Ctx) -> Section:
    s = Section("guards (base, cpu)")
    model = base_checkpoint()
    raw: dict[str, Any] = {}
    clips = {"es": SPANISH, "en": ENGLISH} if ctx.sizes.guards_all_clips else {"es": SPANISH[-3:], "en": ENGLISH[:3]}
    with Arms(ctx, model, "guards") as arms:
        on, off = arms.arms[True], arms.arms[False]
        for arm in (on, off):
            arm.run(arms.stage("warm.wav", testaudio.load(DATA / "jfk.flac")))
        for names in clips.values():
            for n in names:
                arms.stage(n)
        arms.stage(BREATHS)
        # (file, reference, language): silence and noise have no words at all.
        hallucination_set = {
            "60 s silence": (arms.stage("silence.wav", testaudio.silence(60)), "", "en"),
            "es clip + 60 s silence": (arms.stage("es-then-silence.wav", np.concatenate(
                [testaudio.load(DATA / "picovoice_test_es.wav"), testaudio.silence(60)])),
                reference("picovoice_test_es.wav"), "es"),
            "en clip + 60 s silence": (arms.stage("en-then-silence.wav", np.concatenate(
                [testaudio.load(DATA / "picovoice_test_en.wav"), testaudio.silence(60)])),
                reference("picovoice_test_en.wav"), "en"),
            "breaths and pauses": (BREATHS, reference(BREATHS), "en"),
            "30 s pink noise": (arms.stage("pink.wav", testaudio.pink_noise(30)), "", "en"),
        }  # fmt: skip
        for label, opts in GUARD_SETTINGS.items():
            options = {**WHISPER_DEFAULTS, **opts}
            row: dict[str, Any] = {}
            for language, names in clips.items():
                done = [on.run(n, **options) for n in names]
                wer = word_error_rate([(reference(n), d["text"]) for n, d in zip(names, done, strict=True)], language)
                row[f"clips {language}"] = {"wer": wer, "cpu_s": sum(d["cpu_s"] for d in done), "done": done}
            row["hallucination"] = {item: off.run(name, **options) for item, (name, _, _) in hallucination_set.items()}
            errors = {item: word_errors_of(ref, row["hallucination"][item]["text"], language)
                      for item, (_, ref, language) in hallucination_set.items()}  # fmt: skip
            cpu = sum(d["cpu_s"] for d in row["hallucination"].values())
            clips_cpu = row["clips es"]["cpu_s"] + row["clips en"]["cpu_s"]
            s.add(
                label,
                f"gate on, real clips: WER es {row['clips es']['wer']:.1%}, en {row['clips en']['wer']:.1%}, "
                f"{clips_cpu:.0f} CPU-s | gate off, hallucination set: {sum(errors.values())} word errors "
                f"({', '.join(str(e) for e in errors.values())}), {cpu:.0f} CPU-s",
            )
            row["errors"] = errors
            raw[label] = row
        # The hallucination set through the gate, with the [transcribe] defaults.
        gated = {item: on.run(name) for item, (name, _, _) in hallucination_set.items()}
        errors = {item: word_errors_of(ref, gated[item]["text"], language)
                  for item, (_, ref, language) in hallucination_set.items()}  # fmt: skip
        s.add(
            "gate on, [transcribe] defaults",
            f"hallucination set: {sum(errors.values())} word errors ({', '.join(str(e) for e in errors.values())}), "
            f"{sum(d['cpu_s'] for d in gated.values()):.0f} CPU-s",
        )
        raw["gate on, defaults"] = {"done": gated, "errors": errors}
    s.note(
        "guard settings as per-job options on top of whisper's defaults; real clips through the gate (WER with "
        "whisper's normalisers), then the hallucination set without the gate, where the guards are all there is "
        f"(word errors per item: {', '.join(hallucination_set)}); CPU-s = the worker's CPU seconds"
    )
    ctx.results[s.name] = raw
    return s
