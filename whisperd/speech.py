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
    """The speech found in one recording: its chunks (sample ranges, each padded by ``pad_s`` of
    the silence around it) and their audio end to end."""

    chunks: list[dict[str, int]]
    audio: np.ndarray
    pad_s: float = 0.0

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
            if not view.words:
                view.start, view.end = self._off_the_padding(segment["start"], segment["end"], view.start, view.end)
            segment["start"], segment["end"] = view.start, view.end
            for word, moved in zip(segment.get("words", []), view.words, strict=True):
                word["start"], word["end"] = moved.start, moved.end

    def _off_the_padding(self, start: float, end: float, new_start: float, new_end: float) -> tuple[float, float]:
        """A segment without words whose ends fall in two different chunks: Whisper often puts a
        start or end timestamp in the padding of silence next to a joint, which the plain mapping
        sends to the far side of the cut-out silence (a 2 s phrase would span 30 s). A start in the
        last ``pad_s`` of a chunk moves to the next chunk's start, an end in the first ``pad_s`` of
        a chunk to the previous chunk's end."""
        ends = np.cumsum([(c["end"] - c["start"]) / SAMPLE_RATE for c in self.chunks])  # joints on self.audio
        first, last = (
            min(int(np.searchsorted(ends, t, side)), len(ends) - 1) for t, side in ((start, "right"), (end, "left"))
        )
        if first >= last:
            return new_start, new_end
        fixed_start, fixed_end = new_start, new_end
        if ends[first] - start <= self.pad_s:
            fixed_start = round(self.chunks[first + 1]["start"] / SAMPLE_RATE, 2)
        if end - ends[last - 1] <= self.pad_s:
            fixed_end = round(self.chunks[last - 1]["end"] / SAMPLE_RATE, 2)
        return (fixed_start, fixed_end) if fixed_start <= fixed_end else (new_start, new_end)


def find_speech(audio: np.ndarray, threshold: float, min_silence_ms: int, speech_pad_ms: int) -> Speech:
    """Run Silero VAD over 16 kHz mono ``audio``; chunks are padded by ``speech_pad_ms`` each side
    and merged across silences shorter than ``min_silence_ms``."""
    options = VadOptions(threshold=threshold, min_silence_duration_ms=min_silence_ms, speech_pad_ms=speech_pad_ms)
    chunks = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE) if len(audio) else []
    # One concatenate instead of faster-whisper's collect_chunks, which grows the array chunk by
    # chunk (quadratic in the number of chunks on a long recording).
    joined = np.concatenate([audio[c["start"] : c["end"]] for c in chunks]) if chunks else audio[:0]
    return Speech(chunks, joined, speech_pad_ms / 1000)
