"""whisperd.speech.Speech.restore against a straightforward reference, and its cost.

The reference is the mapping as it was: faster-whisper's own ``restore_speech_timestamps`` and
the joints recomputed for every segment without words. Unit tests of one module: no audio, no
VAD, random sorted chunks and segments.
"""

from __future__ import annotations

import copy
import random
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from faster_whisper.transcribe import restore_speech_timestamps

from whisperd.speech import SAMPLE_RATE, Speech

PAD_S = 0.4


def reference_restore(chunks: list[dict[str, int]], pad_s: float, result: dict[str, Any]) -> None:
    """The mapping before it was made linear (quadratic in chunks x segments), kept as the oracle."""
    segments = result["segments"]
    views = [
        SimpleNamespace(start=s["start"], end=s["end"], words=[SimpleNamespace(**w) for w in s.get("words", [])])
        for s in segments
    ]
    for segment, view in zip(segments, restore_speech_timestamps(views, chunks, SAMPLE_RATE), strict=True):
        if not view.words:
            view.start, view.end = reference_off_the_padding(
                chunks, pad_s, segment["start"], segment["end"], view.start, view.end
            )
        segment["start"], segment["end"] = view.start, view.end
        for word, moved in zip(segment.get("words", []), view.words, strict=True):
            word["start"], word["end"] = moved.start, moved.end


def reference_off_the_padding(chunks, pad_s, start, end, new_start, new_end):
    ends = np.cumsum([(c["end"] - c["start"]) / SAMPLE_RATE for c in chunks])
    first, last = (
        min(int(np.searchsorted(ends, t, side)), len(ends) - 1) for t, side in ((start, "right"), (end, "left"))
    )
    if first >= last:
        return new_start, new_end
    fixed_start, fixed_end = new_start, new_end
    if ends[first] - start <= pad_s:
        fixed_start = round(chunks[first + 1]["start"] / SAMPLE_RATE, 2)
    if end - ends[last - 1] <= pad_s:
        fixed_end = round(chunks[last - 1]["end"] / SAMPLE_RATE, 2)
    return (fixed_start, fixed_end) if fixed_start <= fixed_end else (new_start, new_end)


def random_chunks(rng: random.Random, n: int) -> list[dict[str, int]]:
    """Sorted, non-overlapping speech chunks (sample ranges) with silences between them."""
    chunks, at = [], rng.randrange(0, 5 * SAMPLE_RATE)
    for _ in range(n):
        length = rng.randrange(SAMPLE_RATE // 4, 8 * SAMPLE_RATE)
        chunks.append({"start": at, "end": at + length})
        at += length + rng.randrange(SAMPLE_RATE // 10, 20 * SAMPLE_RATE)
    return chunks


def random_result(rng: random.Random, chunks: list[dict[str, int]], n: int) -> dict[str, Any]:
    """Sorted segments on the gated audio, some with words; some ends exactly on a joint or in
    the padding next to one, and some past the end."""
    joints = np.cumsum([(c["end"] - c["start"]) / SAMPLE_RATE for c in chunks])
    total = float(joints[-1])
    times = sorted(rng.uniform(0, total + 1.0) for _ in range(2 * n))
    for i in rng.sample(range(len(times)), len(times) // 5):  # on a joint, or within the padding of one
        joint = float(joints[rng.randrange(len(joints))])
        times[i] = rng.choice([joint, joint - rng.uniform(0, PAD_S), joint + rng.uniform(0, PAD_S)])
    times = [round(t, 2) for t in sorted(times)]
    segments = []
    for start, end in zip(times[::2], times[1::2], strict=True):
        segment: dict[str, Any] = {"start": start, "end": end, "text": "x"}
        if rng.random() < 0.4:
            cuts = sorted(round(rng.uniform(start, end), 2) for _ in range(2 * rng.randrange(1, 4)))
            segment["words"] = [
                {"word": " w", "start": a, "end": b} for a, b in zip(cuts[::2], cuts[1::2], strict=True)
            ]
        segments.append(segment)
    return {"text": "", "segments": segments}


@pytest.mark.parametrize("seed", range(40))
def test_restore_gives_the_references_result(seed):
    rng = random.Random(seed)
    chunks = random_chunks(rng, rng.choice([1, 2, 3, 10, 60]))
    result = random_result(rng, chunks, rng.choice([1, 5, 40, 200]))
    expected = copy.deepcopy(result)
    reference_restore(chunks, PAD_S, expected)
    Speech(chunks, np.zeros(0, np.float32), PAD_S).restore(result)
    assert result == expected


class CountingChunk(dict):
    """A chunk that counts how often its fields are read, for every chunk together."""

    reads = 0

    def __getitem__(self, key: str) -> int:
        CountingChunk.reads += 1
        return super().__getitem__(key)


def test_restore_reads_each_chunk_a_bounded_number_of_times():
    """Linear: the reads of chunk fields grow with chunks + segments, not with their product
    (the former mapping read every chunk again for each segment without words)."""
    rng = random.Random(7)
    chunks = [CountingChunk(c) for c in random_chunks(rng, 2000)]
    result = random_result(rng, [dict(c) for c in chunks], 1000)
    CountingChunk.reads = 0
    Speech(chunks, np.zeros(0, np.float32), PAD_S).restore(result)
    assert CountingChunk.reads <= 6 * (len(chunks) + len(result["segments"])), CountingChunk.reads


def test_restore_of_20000_chunks_and_10000_segments_takes_well_under_5_s():
    rng = random.Random(3)
    chunks = random_chunks(rng, 20_000)
    result = random_result(rng, chunks, 10_000)
    started = time.process_time()
    Speech(chunks, np.zeros(0, np.float32), PAD_S).restore(result)
    assert time.process_time() - started < 5.0  # about 0.1 s; the quadratic mapping took 70 s
