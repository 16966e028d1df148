"""The speech gate: Silero VAD before Whisper, so silence, noise and music never reach the decoder.

Whisper invents text on stretches without speech ("you you", "Subtítulos realizados por la
comunidad de Amara.org") and spends up to six decodings per 30 s window on them (temperature
fallback). The gate keeps only what Silero VAD calls speech, Whisper transcribes that alone, and
the timestamps of segments and words are mapped back onto the original file.

faster-whisper's VAD does the work: its ``get_speech_timestamps`` with the Silero ONNX model the
wheel ships (onnxruntime on the CPU, one thread, no download). The mapping back is faster-whisper's
``restore_speech_timestamps`` rule, computed here in O((chunks + segments) log chunks): its
``SpeechTimestampsMap`` looks each segment end up in a list (``in``, ``.index``), linear in the
chunks, which made a long recording's restore quadratic. Only worker processes import this module.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from whisperd.wire import SAMPLE_RATE


class Timeline:
    """Where a time on the gated audio lies in the original recording: faster-whisper's
    ``SpeechTimestampsMap``, with every lookup a binary search."""

    def __init__(self, chunks: list[dict[str, int]]) -> None:
        self.chunk_end_sample: list[int] = []  # each chunk's end on the gated audio, in samples
        self.silence_before: list[float] = []  # seconds cut out before each chunk
        previous_end = silent = 0
        for chunk in chunks:
            silent += chunk["start"] - previous_end
            previous_end = chunk["end"]
            self.chunk_end_sample.append(chunk["end"] - silent)
            self.silence_before.append(silent / SAMPLE_RATE)
        # the joints on the gated audio, in seconds, as _off_the_padding reads them
        self.joints = np.cumsum([(c["end"] - c["start"]) / SAMPLE_RATE for c in chunks])

    def chunk_of(self, time: float, is_end: bool = False) -> int:
        """The chunk ``time`` falls in; an end exactly on a joint stays in the chunk before it."""
        sample = int(time * SAMPLE_RATE)
        ends = self.chunk_end_sample
        if is_end:
            first = bisect.bisect_left(ends, sample)
            if first < len(ends) and ends[first] == sample:
                return first
        return min(bisect.bisect(ends, sample), len(ends) - 1)

    def original(self, time: float, chunk: int) -> float:
        return round(self.silence_before[chunk] + time, 2)


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
        if not self.chunks:
            return  # no speech: Whisper did not run
        timeline = Timeline(self.chunks)
        for segment in result["segments"]:
            words = segment.get("words", [])
            if words:
                _restore_words(timeline, words)
                segment["start"], segment["end"] = words[0]["start"], words[-1]["end"]
                continue
            start, end = segment["start"], segment["end"]
            new_start = timeline.original(start, timeline.chunk_of(start))
            new_end = timeline.original(end, timeline.chunk_of(end, is_end=True))
            segment["start"], segment["end"] = self._off_the_padding(start, end, new_start, new_end, timeline.joints)

    def _off_the_padding(
        self, start: float, end: float, new_start: float, new_end: float, ends: np.ndarray
    ) -> tuple[float, float]:
        """A segment without words whose ends fall in two different chunks: Whisper often puts a
        start or end timestamp in the padding of silence next to a joint, which the plain mapping
        sends to the far side of the cut-out silence (a 2 s phrase would span 30 s). A start in the
        last ``pad_s`` of a chunk moves to the next chunk's start, an end in the first ``pad_s`` of
        a chunk to the previous chunk's end. ``ends``: the joints on ``self.audio`` (Timeline.joints)."""
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


def _restore_words(timeline: Timeline, words: list[dict[str, Any]]) -> None:
    """Both ends of a word move with the chunk its middle lies in (it never straddles a joint)."""
    for word in words:
        chunk = timeline.chunk_of((word["start"] + word["end"]) / 2)
        word["start"], word["end"] = timeline.original(word["start"], chunk), timeline.original(word["end"], chunk)


def find_speech(audio: np.ndarray, threshold: float, min_silence_ms: int, speech_pad_ms: int) -> Speech:
    """Run Silero VAD over 16 kHz mono ``audio``; chunks are padded by ``speech_pad_ms`` each side
    and merged across silences shorter than ``min_silence_ms``."""
    options = VadOptions(threshold=threshold, min_silence_duration_ms=min_silence_ms, speech_pad_ms=speech_pad_ms)
    chunks = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE) if len(audio) else []
    # One concatenate instead of faster-whisper's collect_chunks, which grows the array chunk by
    # chunk (quadratic in the number of chunks on a long recording).
    joined = np.concatenate([audio[c["start"] : c["end"]] for c in chunks]) if chunks else audio[:0]
    return Speech(chunks, joined, speech_pad_ms / 1000)
