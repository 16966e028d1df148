"""The speech clips in tests/data, for the tests and the benchmarks alike: which files, their
languages, their reference transcripts, the sets the accuracy goals are set on, and longer audio
built from them with ffmpeg (staged copies, repeats, concatenations).

The fixture model must say each of the seven ``CLIPS`` verbatim; it never saw the FLEURS, MLS and
spontaneous clips of the real-weights sets (tests/data/README.md).
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path
from typing import NamedTuple

from whisperd.wire import SAMPLE_RATE

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "tests" / "data"
FIXTURE_MODEL = DATA_DIR / "fixture-model.pt"
CACHE = REPO / ".cache" / "bench" / "audio"  # long files built once, reused by later benchmark runs


class Clip(NamedTuple):
    """One clip: its file in tests/data and its language (also a ``(file, language)`` pair)."""

    audio: str
    language: str

    @property
    def path(self) -> Path:
        return DATA_DIR / self.audio

    @property
    def reference(self) -> str:
        return self.path.with_suffix(".txt").read_text(encoding="utf-8").strip()


# The seven clips of tests/data/README.md, 2 to 11 s each.
CLIPS: tuple[Clip, ...] = (
    Clip("jfk.flac", "en"),
    Clip("librispeech_1089-134686-0001.wav", "en"),
    Clip("librispeech_2830-3980-0043.wav", "en"),
    Clip("librispeech_4507-16021-0012.wav", "en"),
    Clip("librispeech_8455-210777-0068.wav", "en"),
    Clip("picovoice_test_en.wav", "en"),
    Clip("picovoice_test_es.wav", "es"),
)

JFK = CLIPS[0]
SPANISH = CLIPS[-1]
SHORTEST = "librispeech_2830-3980-0043.wav"  # 1.98 s

# Real speech for the real-weights tier and bench section, in sets as the real-speech issue sets its goals.
SPANISH_READ: tuple[Clip, ...] = (
    *(Clip(f"fleurs_es_{i:03d}.ogg", "es") for i in range(8)),
    Clip("mls_es_13697_11991_000000.opus", "es"),
    SPANISH,
)
LIBRISPEECH: tuple[Clip, ...] = tuple(c for c in CLIPS if c.audio.startswith("librispeech_"))
SPONTANEOUS_EN = Clip("mfa_acoustic_corpus.wav", "en")

# The same sets by the names the benchmark reports them under: name -> (language of its normaliser,
# files). 161 s of audio in all.
LIBRISPEECH_SET = "LibriSpeech, 4 clips"
REAL_SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Spanish read, 10 clips": ("es", tuple(c.audio for c in SPANISH_READ)),
    LIBRISPEECH_SET: ("en", tuple(c.audio for c in LIBRISPEECH)),
    "English spontaneous": ("en", (SPONTANEOUS_EN.audio,)),
    "JFK": ("en", (JFK.audio,)),
}


def stage(media: Path, n: int, prefix: str = "clip") -> list[str]:
    """Copy the clips round-robin into ``media`` as ``n`` distinct files; returns their names."""
    media.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        source = CLIPS[i % len(CLIPS)].path
        name = f"{prefix}-{i:04d}{source.suffix}"
        shutil.copyfile(source, media / name)
        names.append(name)
    return names


def language_of(name: str) -> str:
    """The language of a file ``stage`` wrote, from the clip it was copied from."""
    index = int(name.rsplit("-", 1)[1].split(".")[0])
    return CLIPS[index % len(CLIPS)].language


def pcm(path: Path) -> bytes:
    """16 kHz mono s16le samples of an audio file."""
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", "16000", "-"]
    return subprocess.run(cmd, capture_output=True, check=True).stdout


def long_file(seconds: float, clips: tuple[str, ...] | None = None) -> Path:
    """The clips concatenated over and over up to ``seconds`` of speech, as a 16 kHz WAV (cached)."""
    names = clips or tuple(c.audio for c in CLIPS)
    out = CACHE / f"concat-{int(seconds)}s-{len(names)}clips.wav"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    pieces = [pcm(DATA_DIR / name) for name in names]
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


def repeat_audio(source: Path, times: int, out: Path) -> Path:
    """``source`` played ``times`` times in a row (stream copy: instant, same format)."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-stream_loop", str(times - 1), "-i", str(source), "-c", "copy",
         str(out)],
        check=True,
    )  # fmt: skip
    return out


def concat_audio(sources: list[Path], out: Path) -> Path:
    """``sources`` one after another, as 16 kHz mono WAV."""
    inputs = [arg for source in sources for arg in ("-i", str(source))]
    graph = f"concat=n={len(sources)}:v=0:a=1,aresample=16000"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", *inputs, "-filter_complex", graph, "-ac", "1", str(out)],
        check=True,
    )
    return out


def english_speech(rounds: int, out: Path) -> Path:
    """The English clips (54 s of distinct speech) ``rounds`` times. Unlike one clip repeated, no
    30-second window holds the same sentence twice, so real weights decode it greedily (a window of
    repeats trips whisper's compression-ratio guard and falls back to random sampling: slow and
    nondeterministic)."""
    english = [c.path for c in (*CLIPS, SPONTANEOUS_EN) if c.language == "en"]
    return concat_audio(english * rounds, out)
