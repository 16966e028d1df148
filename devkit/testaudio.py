"""Audio without speech, and recordings of speech clips separated by silence, for tests and benchmarks.

The non-speech set is what makes Whisper invent text: digital silence, a steady tone, pink noise
and music (chords, a melody and a beat, synthesised here; no recording needed). Everything is
16 kHz mono float32 (``wire.SAMPLE_RATE``), deterministic (seeded), and written as 16-bit WAV.
Nothing here is imported by the daemon, nor shipped with it.
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisperd.wire import SAMPLE_RATE

NON_SPEECH = ("silence", "tone", "pink_noise", "music")


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), np.float32)


def tone(seconds: float, hz: float = 440.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def pink_noise(seconds: float, level: float = 0.1, seed: int = 0) -> np.ndarray:
    """White noise shaped to 1/f power in the frequency domain, scaled to ``level`` RMS."""
    n = round(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    noise = np.fft.irfft(spectrum, n)
    return (level * noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def _note(hz: float, seconds: float, level: float) -> np.ndarray:
    """A plucked note: a few harmonics under an exponential decay."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    harmonics = sum(np.sin(2 * np.pi * hz * k * t) / k**1.5 for k in (1, 2, 3, 4))
    return level * harmonics * np.exp(-3.0 * t / seconds)


def music(seconds: float, seed: int = 0) -> np.ndarray:
    """I-V-vi-IV chords (2 s each), a random melody in C major in eighth notes, a kick on each beat."""
    rng = np.random.default_rng(seed)
    out = np.zeros(round(seconds * SAMPLE_RATE))
    chords = ((261.6, 329.6, 392.0), (196.0, 246.9, 293.7), (220.0, 261.6, 329.6), (174.6, 220.0, 261.6))
    scale = (523.3, 587.3, 659.3, 698.5, 784.0, 880.0, 987.8, 1046.5)
    beat = SAMPLE_RATE // 2  # 120 bpm
    kick = np.sin(2 * np.pi * 60 * np.arange(2000) / SAMPLE_RATE) * np.exp(-np.arange(2000) / 400)
    for start in range(0, len(out), beat):
        chord = chords[(start // (4 * beat)) % len(chords)]
        pieces = [(start, sum(_note(hz, 0.5, 0.08) for hz in chord)), (start, 0.4 * kick)]
        pieces += [(start + half * beat // 2, _note(rng.choice(scale), 0.25, 0.12)) for half in (0, 1)]
        for at, piece in pieces:
            end = min(len(out), at + len(piece))
            out[at:end] += piece[: end - at]
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def non_speech(kind: str, seconds: float) -> np.ndarray:
    return {"silence": silence, "tone": tone, "pink_noise": pink_noise, "music": music}[kind](seconds)


def write_wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def load(path: Path) -> np.ndarray:
    """Any audio file as 16 kHz mono float32, decoded by whisper's own ffmpeg call."""
    from whisper.audio import load_audio

    return load_audio(str(path))


@dataclass(frozen=True)
class Placed:
    """Where a clip sits in an assembled recording, in seconds."""

    source: Path
    start: float
    end: float


def recording(clips: Sequence[Path], gaps: Sequence[float], lead_s: float = 0.0) -> tuple[np.ndarray, list[Placed]]:
    """``lead_s`` of silence, then each clip followed by its gap of silence (``gaps[i]`` after
    ``clips[i]``); returns the audio and where each clip landed."""
    pieces, placed, at = [silence(lead_s)], [], len(silence(lead_s))
    for clip, gap in zip(clips, gaps, strict=True):
        audio = load(clip)
        placed.append(Placed(clip, at / SAMPLE_RATE, (at + len(audio)) / SAMPLE_RATE))
        pieces += [audio, silence(gap)]
        at += len(audio) + len(pieces[-1])
    return np.concatenate(pieces), placed
