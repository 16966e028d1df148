"""Multi-speaker recordings built from the real clips, with the truth of who speaks when.

tests/data has no conversation, but its clips are of different people: each FLEURS clip is
another speaker, and so are the Picovoice and MLS ones. A clip with pauses inside it is cut at
those pauses into pieces, so one speaker can take several turns; the pieces are laid out one after
another with short pauses, and a turn may start before the previous one ends (an overlap).

The cut points are the middles of each clip's pauses as faster-whisper's Silero VAD finds them
(min_silence_duration_ms=250, no padding), measured once and written here, so building a
conversation needs only ffmpeg and numpy (write it with ``testaudio.write_wav``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from devkit import testaudio
from devkit.clips import DATA_DIR
from whisperd.wire import SAMPLE_RATE

# clip -> the seconds at which it is cut into pieces (the middles of its pauses).
CUTS: dict[str, tuple[float, ...]] = {
    "fleurs_es_001.ogg": (7.47, 18.59),
    "picovoice_test_es.wav": (3.31, 5.18),
    "fleurs_es_002.ogg": (5.09,),
    "fleurs_es_003.ogg": (3.46,),
    "fleurs_es_007.ogg": (6.48,),
    "mfa_acoustic_corpus.wav": (12.05, 17.84, 22.66),
    "jfk.flac": (2.78, 4.9, 7.92),
}


class Line(NamedTuple):
    """One turn of the script: ``piece`` of ``clip`` (0-based, from CUTS), then ``gap_s`` of silence
    before the next turn (negative: the next turn starts that much before this one ends)."""

    clip: str
    piece: int
    gap_s: float = 0.4


class Turn(NamedTuple):
    """Who speaks when in the built recording: the clip stands for its speaker."""

    speaker: str
    start: float
    end: float


# A Spanish conversation: 5 speakers, 12 turns, pauses of 0.3-0.7 s and one overlap of 0.5 s.
SPANISH_MEETING: tuple[Line, ...] = (
    Line("fleurs_es_001.ogg", 0),
    Line("picovoice_test_es.wav", 0, 0.5),
    Line("fleurs_es_002.ogg", 0),
    Line("fleurs_es_001.ogg", 1, 0.6),
    Line("fleurs_es_003.ogg", 0, 0.3),
    Line("picovoice_test_es.wav", 1),
    Line("fleurs_es_007.ogg", 0, -0.5),  # the next speaker starts before this one has finished
    Line("fleurs_es_002.ogg", 1, 0.7),
    Line("fleurs_es_003.ogg", 1),
    Line("picovoice_test_es.wav", 2, 0.5),
    Line("fleurs_es_007.ogg", 1),
    Line("fleurs_es_001.ogg", 2),
)

# A two-person exchange in English: the spontaneous speaker and JFK, 8 turns.
ENGLISH_INTERVIEW: tuple[Line, ...] = (
    Line("mfa_acoustic_corpus.wav", 0),
    Line("jfk.flac", 0),
    Line("mfa_acoustic_corpus.wav", 1),
    Line("jfk.flac", 1, 0.6),
    Line("mfa_acoustic_corpus.wav", 2),
    Line("jfk.flac", 2),
    Line("mfa_acoustic_corpus.wav", 3, 0.5),
    Line("jfk.flac", 3),
)


def piece(clip: str, index: int) -> np.ndarray:
    audio = testaudio.load(DATA_DIR / clip)
    bounds = [0, *(int(t * SAMPLE_RATE) for t in CUTS.get(clip, ())), len(audio)]
    return audio[bounds[index] : bounds[index + 1]]


def build(script: tuple[Line, ...]) -> tuple[np.ndarray, list[Turn]]:
    """The recording the script describes (overlaps mixed) and its turns, in order."""
    pieces = [piece(line.clip, line.piece) for line in script]
    starts, at = [], 0
    for line, audio in zip(script, pieces, strict=True):
        starts.append(at)
        at += len(audio) + int(line.gap_s * SAMPLE_RATE)
    mix = np.zeros(max(s + len(p) for s, p in zip(starts, pieces, strict=True)), np.float32)
    turns = []
    for line, start, audio in zip(script, starts, pieces, strict=True):
        mix[start : start + len(audio)] += audio
        turns.append(Turn(line.clip, start / SAMPLE_RATE, (start + len(audio)) / SAMPLE_RATE))
    return np.clip(mix, -1.0, 1.0), turns


def speaker_at(turns: list[Turn], t: float) -> str | None:
    """The speaker talking at ``t``, the one whose turn is nearest when nobody is (None: no turns)."""
    if not turns:
        return None
    return min(turns, key=lambda turn: max(turn.start - t, t - turn.end, 0.0)).speaker


def word_accuracy(words: list[tuple[float, float, str]], truth: list[Turn]) -> float:
    """The share of ``(start, end, speaker)`` words given the right speaker, under the best one-to-one
    mapping of found labels to true speakers (greedy on the counts, which is exact when each found
    label mostly covers one speaker)."""
    if not words:
        return 0.0
    counts: dict[tuple[str, str], int] = {}
    for start, end, label in words:
        key = (label, speaker_at(truth, (start + end) / 2) or "")
        counts[key] = counts.get(key, 0) + 1
    right, used_labels, used_speakers = 0, set(), set()
    for (label, speaker), n in sorted(counts.items(), key=lambda kv: -kv[1]):
        if label not in used_labels and speaker not in used_speakers:
            right += n
            used_labels.add(label)
            used_speakers.add(speaker)
    return right / len(words)


def diarization_error(found: list[Turn], truth: list[Turn], collar_s: float = 0.25, step_s: float = 0.01) -> float:
    """The diarization error rate of ``found`` against ``truth``: (missed speech + false alarm +
    speaker confusion) / the truth's speech time, on 10 ms frames, with ``collar_s`` on each side of
    every true turn boundary left out (the usual 0.25 s), under the mapping of found labels to true
    speakers that agrees most (scipy's assignment). Overlapped speech counts for each speaker in it."""
    from scipy.optimize import linear_sum_assignment

    end = max(t.end for t in [*found, *truth])
    frames = int(end / step_s) + 1
    ref_names = sorted({t.speaker for t in truth})
    hyp_names = sorted({t.speaker for t in found})
    ref = np.zeros((len(ref_names), frames), bool)
    hyp = np.zeros((len(hyp_names), frames), bool)
    for grid, names, turns in ((ref, ref_names, truth), (hyp, hyp_names, found)):
        for t in turns:
            grid[names.index(t.speaker), int(t.start / step_s) : int(t.end / step_s)] = True
    scored = np.ones(frames, bool)
    for t in truth:
        for edge in (t.start, t.end):
            scored[max(0, int((edge - collar_s) / step_s)) : int((edge + collar_s) / step_s)] = False
    ref, hyp = ref[:, scored], hyp[:, scored]
    together = ref.astype(np.int64) @ hyp.T.astype(np.int64)  # frames each pair shares
    rows, cols = linear_sum_assignment(-together) if hyp_names else ([], [])
    n_ref, n_hyp = ref.sum(axis=0), hyp.sum(axis=0)
    correct = np.zeros(ref.shape[1], np.int64)
    for r, c in zip(rows, cols, strict=True):
        correct += ref[r] & hyp[c]
    errors = np.maximum(n_ref, n_hyp) - correct  # missed + false alarm + confusion, per frame
    return float(errors.sum() / max(n_ref.sum(), 1))


def speech_only(turns: list[Turn], audio: np.ndarray) -> list[Turn]:
    """``turns`` cut down to where there is speech, as faster-whisper's Silero VAD finds it (its
    defaults, 30 ms of padding): a clip's piece starts and ends with part of a pause, which a
    reference for the diarization error rate must not count as talk."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    found = get_speech_timestamps(audio, VadOptions(min_silence_duration_ms=250, speech_pad_ms=30))
    speech = [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in found]
    return [
        Turn(t.speaker, max(t.start, a), min(t.end, b))
        for t in turns
        for a, b in speech
        if min(t.end, b) > max(t.start, a)
    ]
