"""Benchmark audio: the project's speech clips, staged as many files, and long concatenations.

Clips come from tests/data (read as data files; nothing is imported from tests/). Long files
are built once with ffmpeg into .cache/bench/audio and reused.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
CACHE = REPO / ".cache" / "bench" / "audio"
FIXTURE_MODEL = DATA / "fixture-model.pt"
SAMPLE_RATE = 16000

# (file, language): the seven clips of tests/data/README.md, 2 to 11 s each.
CLIPS: tuple[tuple[str, str], ...] = (
    ("jfk.flac", "en"),
    ("librispeech_1089-134686-0001.wav", "en"),
    ("librispeech_2830-3980-0043.wav", "en"),
    ("librispeech_4507-16021-0012.wav", "en"),
    ("librispeech_8455-210777-0068.wav", "en"),
    ("picovoice_test_en.wav", "en"),
    ("picovoice_test_es.wav", "es"),
)
SHORTEST = "librispeech_2830-3980-0043.wav"  # 1.98 s

# The real-weights section's clip sets, as the real-speech issue sets its goals (tests/data/README.md):
# set name -> (language of its normaliser, files). 161 s of audio in all.
LIBRISPEECH_SET = "LibriSpeech, 4 clips"
REAL_SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Spanish read, 10 clips": (
        "es",
        (*(f"fleurs_es_{i:03d}.ogg" for i in range(8)), "mls_es_13697_11991_000000.opus", "picovoice_test_es.wav"),
    ),
    LIBRISPEECH_SET: ("en", tuple(c for c, _ in CLIPS if c.startswith("librispeech_"))),
    "English spontaneous": ("en", ("mfa_acoustic_corpus.wav",)),
    "JFK": ("en", ("jfk.flac",)),
}


def stage(media: Path, n: int, prefix: str = "clip") -> list[str]:
    """Copy the clips round-robin into ``media`` as ``n`` distinct files; returns their names."""
    media.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        source = DATA / CLIPS[i % len(CLIPS)][0]
        name = f"{prefix}-{i:04d}{source.suffix}"
        shutil.copyfile(source, media / name)
        names.append(name)
    return names


def language_of(name: str) -> str:
    """The language of a staged file, from the clip it was copied from."""
    index = int(name.rsplit("-", 1)[1].split(".")[0])
    return CLIPS[index % len(CLIPS)][1]


def pcm(path: Path) -> bytes:
    """16 kHz mono s16le samples of an audio file."""
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", "16000", "-"]
    return subprocess.run(cmd, capture_output=True, check=True).stdout


def long_file(seconds: float, clips: tuple[str, ...] | None = None) -> Path:
    """The clips concatenated over and over up to ``seconds`` of speech, as a 16 kHz WAV (cached)."""
    names = clips or tuple(c for c, _ in CLIPS)
    out = CACHE / f"concat-{int(seconds)}s-{len(names)}clips.wav"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    pieces = [pcm(DATA / name) for name in names]
    want = int(seconds * SAMPLE_RATE) * 2
    data = bytearray()
    while len(data) < want:
        for piece in pieces:
            data += piece
    tmp = out.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(bytes(data[:want]))
    tmp.replace(out)
    return out
