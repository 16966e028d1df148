"""The speech gate: Silero VAD before Whisper, so silence, noise and music never reach the decoder.

Whisper invents text on stretches without speech ("you you", "Subtítulos realizados por la
comunidad de Amara.org") and spends up to six decodings per 30 s window on them (temperature
fallback). The gate keeps only what Silero VAD calls speech, Whisper transcribes that alone, and
the timestamps of segments and words are mapped back onto the original file.

faster-whisper's VAD does the work: its ``get_speech_timestamps`` with the Silero ONNX model the
wheel ships (onnxruntime on the CPU, one thread, no download), and its
``restore_speech_timestamps`` for the mapping back. Only worker processes import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from faster_whisper.transcribe import restore_speech_timestamps
from faster_whisper.vad import VadOptions, get_speech_timestamps

SAMPLE_RATE = 16000


@dataclass
class Speech:
    """The speech found in one recording: its chunks (sample ranges) and their audio end to end."""

    chunks: list[dict[str, int]]
    audio: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def restore(self, result: dict[str, Any]) -> None:
        """Move the segment and word timestamps of Whisper's ``result`` on ``self.audio`` back to
        where they are in the original recording (in place)."""
        segments = result["segments"]
        views = [
            SimpleNamespace(start=s["start"], end=s["end"], words=[SimpleNamespace(**w) for w in s.get("words", [])])
            for s in segments
        ]
        for segment, view in zip(segments, restore_speech_timestamps(views, self.chunks, SAMPLE_RATE), strict=True):
            segment["start"], segment["end"] = view.start, view.end
            for word, moved in zip(segment.get("words", []), view.words, strict=True):
                word["start"], word["end"] = moved.start, moved.end


def find_speech(audio: np.ndarray, threshold: float, min_silence_ms: int, speech_pad_ms: int) -> Speech:
    """Run Silero VAD over 16 kHz mono ``audio``; chunks are padded by ``speech_pad_ms`` each side
    and merged across silences shorter than ``min_silence_ms``."""
    options = VadOptions(threshold=threshold, min_silence_duration_ms=min_silence_ms, speech_pad_ms=speech_pad_ms)
    chunks = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE) if len(audio) else []
    # One concatenate instead of faster-whisper's collect_chunks, which grows the array chunk by
    # chunk (quadratic in the number of chunks on a long recording).
    joined = np.concatenate([audio[c["start"] : c["end"]] for c in chunks]) if chunks else audio[:0]
    return Speech(chunks, joined)
