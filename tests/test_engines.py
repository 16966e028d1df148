"""The two engines on OpenAI's real weights: same result shape, progress, threads; faster-whisper
without torch; a reload that switches engine on the real daemon loses no job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, submit, wait_for

from devkit import testaudio
from devkit.clips import CLIPS, JFK, SPANISH, SPONTANEOUS_EN, english_speech
from devkit.wer import word_error_rate
from whisperd.config import ModelConfig, TranscribeConfig
from whisperd.contract import Job
from whisperd.engines import thread_env, window_s
from whisperd.transcriber import Transcriber

ENGINES = ("openai-whisper", "faster-whisper")
GREEDY_NO_GATE = TranscribeConfig(vad=False, short_window=True)


@pytest.fixture(scope="module", params=ENGINES)
def tiny(request, real_weights) -> Transcriber:
    t = Transcriber(ModelConfig(**real_weights.section("tiny.en", request.param)), threads=2)
    t.warm_up()
    return t


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """108 s of distinct English speech: four 30-second windows."""
    return testaudio.load(english_speech(2, tmp_path_factory.mktemp("audio") / "speech.wav"))


def test_both_engines_give_whispers_result_shape(tiny):
    transcript = tiny.transcribe(testaudio.load(JFK.path), Job("t", "x", word_timestamps=True), GREEDY_NO_GATE)
    assert transcript.text.strip().startswith("And so my fellow Americans")
    assert transcript.language == "en" and transcript.speech_s is None
    result = transcript.to_whisper_dict()  # what the writers get
    keys = {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
            "no_speech_prob", "words"}  # fmt: skip
    for segment in result["segments"]:
        assert keys <= segment.keys()
        assert all(isinstance(v, float) for v in (segment["start"], segment["end"])), segment
        for word in segment["words"]:
            assert word.keys() == {"word", "start", "end", "probability"}
    json.dumps(result)  # the json writer stores it as it is


def test_progress_rises_to_the_end_of_the_audio(tiny, speech):
    seen: list[float] = []
    tiny.transcribe(speech, Job("t", "x"), GREEDY_NO_GATE, progress=seen.append)
    assert len(seen) >= 3, seen
    assert seen == sorted(seen) and 0 < seen[0] < 0.5 and seen[-1] >= 0.9, seen


def test_the_gate_on_each_engine_skips_silence_and_reports_the_speech(tiny):
    audio, (placed,) = testaudio.recording([JFK.path], [40.0], lead_s=30.0)
    result = tiny.transcribe(audio, Job("t", "x"), TranscribeConfig())
    assert "my fellow Americans" in result.text
    assert placed.end - placed.start - 2.0 <= result.speech_s <= placed.end - placed.start + 2 * 0.4 + 0.01
    assert placed.start - 0.5 <= result.segments[0].start <= placed.start + 1.0
    silent = tiny.transcribe(testaudio.silence(30), Job("t", "x"), TranscribeConfig())
    assert (silent.text, silent.segments, silent.speech_s) == ("", (), 0.0)


def test_english_only_model_refuses_spanish_on_each_engine(tiny):
    from whisperd.contract import ErrorCode, JobError

    with pytest.raises(JobError) as e:
        tiny.check(Job("t", "x", language="es"))
    assert e.value.code == ErrorCode.UNSUPPORTED_LANGUAGE


def test_the_window_is_short_only_for_audio_that_fits_well_inside_it():
    second = 16000
    assert window_s(2 * second) == 10, "never below the floor"
    assert window_s(11 * second) == 12, "the audio and a second after it"
    assert window_s(19 * second) == 20
    assert window_s(19 * second + 1) == 30, "over 20 s: Whisper's own window"
    assert window_s(600 * second) == 30
    assert window_s(2 * second, short_window=False) == 30


def test_openmp_threads_spin_briefly_unless_the_operator_chose_a_policy():
    assert thread_env(2, {}) == {
        "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "GOMP_SPINCOUNT": "10000",
    }  # fmt: skip
    assert "GOMP_SPINCOUNT" not in thread_env(2, {"OMP_WAIT_POLICY": "ACTIVE"})
    assert "GOMP_SPINCOUNT" not in thread_env(2, {"GOMP_SPINCOUNT": "0"})


@pytest.fixture
def encoder_frames(tiny, monkeypatch) -> list[int]:
    """The number of mel frames each encoder call of the engine really gets."""
    frames: list[int] = []
    if tiny.engine.name == "openai-whisper":
        hook = tiny.engine.window.inner.register_forward_pre_hook(lambda _, args: frames.append(args[0].shape[-1]))
        yield frames
        hook.remove()
    else:
        import faster_whisper.transcribe as fw

        storage = fw.get_ctranslate2_storage
        monkeypatch.setattr(fw, "get_ctranslate2_storage", lambda f: frames.append(f.shape[-1]) or storage(f))
        yield frames


def test_short_audio_is_encoded_in_a_short_window_with_the_same_words(tiny, encoder_frames, speech):
    audio = testaudio.load(JFK.path)  # 11.0 s: a 12 s window
    short = tiny.transcribe(audio, Job("t", "x", word_timestamps=True), GREEDY_NO_GATE)
    assert set(encoder_frames) == {1200}, encoder_frames
    encoder_frames.clear()
    full = tiny.transcribe(audio, Job("t", "x", word_timestamps=True), TranscribeConfig(vad=False, short_window=False))
    assert set(encoder_frames) == {3000}, encoder_frames
    wer = {name: word_error_rate([(JFK.reference, r.text)], "en") for name, r in (("short", short), ("full", full))}
    assert wer["short"] <= wer["full"] + 0.05, wer
    words = [w for s in short.segments for w in s.words or ()]
    assert 0 <= words[0].start < 1.0 and 9.0 < words[-1].end <= 11.1, "timestamps on the recording's timeline"
    encoder_frames.clear()
    tiny.transcribe(speech[: 40 * 16000], Job("t", "x"), GREEDY_NO_GATE)
    assert set(encoder_frames) == {3000}, "a longer recording keeps Whisper's window"


def test_the_window_fits_the_speech_the_gate_kept_not_the_file(tiny, encoder_frames):
    """11 s of speech then 40 s of silence: after the gate the model sees 11 s, so a 12 s window,
    the same input as the speech alone (and so the same words)."""
    audio = np.concatenate([testaudio.load(JFK.path), testaudio.silence(40)])
    result = tiny.transcribe(audio, Job("t", "x"), TranscribeConfig(short_window=True))
    assert set(encoder_frames) == {1200}, encoder_frames
    assert result.text.strip()


def test_auto_short_window_is_on_where_it_met_its_goals(tiny, encoder_frames):
    """bench/RESULTS.md "Real hosts": faster-whisper 2.5x at the same WER; openai-whisper 1.6x and a word more wrong."""
    tiny.transcribe(testaudio.load(JFK.path), Job("t", "x"), TranscribeConfig(vad=False, short_window="auto"))
    expected = 1200 if tiny.engine.name == "faster-whisper" else 3000
    assert set(encoder_frames) == {expected}, (tiny.engine.name, encoder_frames)


def test_a_thread_change_reaches_the_engine(tiny):
    loaded = tiny.engine.model
    tiny.threads = 1
    try:
        assert tiny.engine.threads == 1
        # CTranslate2 fixes its threads when it loads a model: faster-whisper's is loaded again.
        assert (tiny.engine.model is not loaded) == (tiny.engine.name == "faster-whisper")
        assert tiny.transcribe(testaudio.load(JFK.path), Job("t", "x"), GREEDY_NO_GATE).text
    finally:
        tiny.threads = 2


def test_faster_whisper_worker_never_imports_torch(real_weights):
    """The memory faster-whisper saves is lost if torch comes along: nothing on its path imports it
    (the result writers and language table come from whisper's files without its package)."""
    code = f"""
import subprocess, sys, tempfile
import numpy as np
from whisperd.config import ModelConfig
from whisperd.contract import Job
from whisperd.engines import thread_env, window_s
from devkit.wer import word_error_rate
from whisperd.results import ResultStore
from whisperd.transcriber import Transcriber
t = Transcriber(ModelConfig(engine="faster-whisper", name={str(real_weights.ctranslate2_dir("tiny.en"))!r}), 1)
t.warm_up()
pcm = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", {str(JFK.path)!r}, "-f", "s16le", "-ac", "1",
                      "-ar", "16000", "-"], capture_output=True, check=True).stdout
audio = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768
result = t.transcribe(audio, Job("t", "x", language="english"))
assert "Americans" in result.text, result
ResultStore(tempfile.mkdtemp()).write("t", result.to_whisper_dict(), ("json", "txt", "srt", "vtt", "tsv"))
print(sorted(m for m in ("torch", "whisper") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_reload_that_switches_engine_replaces_workers_one_at_a_time_without_losing_a_job(
    broker, daemon_factory, real_weights
):
    d = daemon_factory(model=real_weights.section("base"), workers={"count": 2}).start(timeout=300)
    before = {w.pid for w in d.workers()}
    for i in range(4):
        submit(broker, d, SPANISH.path, f"before-{i}")
    d.configure(model=real_weights.section("base", "faster-whisper"))
    d.signal(signal.SIGHUP)
    for i in range(4):
        submit(broker, d, JFK.path, f"during-{i}")
    serving = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and d.log().count("replaced after reload; it finishes") < 2:
        serving.append(sum(1 for t in d.titles() if "[idle]" in t or "[busy" in t))
        time.sleep(0.1)
    assert d.log().count("replaced after reload; it finishes") == 2
    assert min(serving) >= 1, "capacity dropped to zero while switching engine"
    wait_for(lambda: len(d.workers()) == 2 and not {w.pid for w in d.workers()} & before, 120, "two new workers")
    submit(broker, d, JFK.path, "after")
    got = {c["task_id"]: c for c in broker.completions(9, 600)}
    assert sorted(got) == sorted([f"before-{i}" for i in range(4)] + [f"during-{i}" for i in range(4)] + ["after"])
    assert all(c["status"] == "done" for c in got.values()), got
    assert "arenas" in got["before-0"]["text"] and "Americans" in got["after"]["text"]
    assert "loaded by faster-whisper on cpu" in d.log()
    for w in d.workers():  # a faster-whisper worker maps CTranslate2 and never libtorch
        libraries = {Path(m.path).name for m in w.memory_maps()}
        assert any(name.startswith("libctranslate2") for name in libraries), sorted(libraries)
        assert not any(name.startswith("libtorch") for name in libraries), sorted(libraries)
    assert broker.get(broker.result_queue, 2) is None


@pytest.mark.parametrize("gate", [False, True], ids=["ungated", "gated"])
def test_faster_whisper_batched_pipeline_keeps_the_words(real_weights, speech, gate):
    """``model.batch_size`` (for GPUs): the pieces of one file decoded together, cut by Silero at
    short pauses whatever the gate says. On the CPU here it must only keep the words: base, the
    English clips twice, measured 5.2 % WER batched against 3.2 % one window at a time."""
    reference = " ".join(c.reference for c in (*CLIPS, SPONTANEOUS_EN) if c.language == "en")
    reference = f"{reference} {reference}"
    section = real_weights.section("base", "faster-whisper")
    settings = TranscribeConfig(vad=gate)
    one = Transcriber(ModelConfig(**section), threads=2).transcribe(speech, Job("t", "x"), settings)
    batched = Transcriber(ModelConfig(**section, batch_size=4), threads=2)
    assert batched.engine.batched is not None
    result = batched.transcribe(speech, Job("t", "x"), settings)
    wer_one, wer_batched = (word_error_rate([(reference, r.text)], "en") for r in (one, result))
    assert wer_batched <= wer_one + 0.03, (wer_one, wer_batched, result.text)
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end <= len(speech) / 16000 + 0.5
    assert (result.speech_s is not None) == gate
