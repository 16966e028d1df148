"""Who said what: whisper's transcript and a diarizer's speaker turns, merged.

The diarizer answers on the recording's own timeline, with labels of its own (``SPEAKER_03``) in no
particular order and turns that may overlap; whisper's word timing says when each word was said.
Each word goes to the speaker whose turns cover it most, a segment is cut where the speaker
changes (a segment is a subtitle cue, and one cue must not put two people's words under one
name), and the labels are renamed by first appearance, so a transcript reads ``SPEAKER_00``
first whatever the diarizer numbered. Pure Python on plain floats: no numpy, no torch.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import accumulate, groupby

from whisperd.transcript import Segment, SpeakerTime, Transcript, Word


@dataclass(frozen=True)
class Turn:
    """One stretch of one speaker talking, as the diarizer gives it (seconds, its own label)."""

    start: float
    end: float
    speaker: str


def attribute(transcript: Transcript, turns: Sequence[Turn]) -> Transcript:
    """``transcript`` with a speaker on every word and segment, segments cut where the speaker
    changes (ids renumbered), and ``speakers`` saying who talks and how long. No turns (the
    diarizer heard nobody) leaves it as it is, with ``speakers=()``: diarized, but nobody named."""
    if not turns:
        return replace(transcript, speakers=())
    timeline = _Timeline(turns)
    pieces = [piece for segment in transcript.segments for piece in _split(segment, timeline)]
    names = _names(pieces)
    segments = tuple(_relabel(piece, i, names) for i, piece in enumerate(pieces))
    speakers = tuple(SpeakerTime(new, _talk_s(turns, old)) for old, new in names.items())
    return replace(transcript, segments=segments, speakers=speakers)


class _Timeline:
    """The turns sorted by start, so each word looks only at the turns near it: an hour of talk
    has thousands of words and turns, and every word against every turn would take seconds."""

    def __init__(self, turns: Sequence[Turn]) -> None:
        self.turns = sorted(turns, key=lambda t: (t.start, t.end))
        self.starts = [t.start for t in self.turns]
        self.longest = max(t.end - t.start for t in self.turns)
        # reach[i]: of turns[:i + 1], the one that ends last (the nearest before a span after it)
        self.reach = list(accumulate(self.turns, lambda a, b: b if b.end > a.end else a))

    def speaker_of(self, start: float, end: float) -> str:
        """The speaker whose turns overlap [start, end] most, summed (ties: the earlier turn's);
        when none does (a word in a gap the diarizer left), the nearest turn's: every word is
        someone's."""
        hi = bisect_right(self.starts, end)  # turns[hi:] start after the span
        lo = bisect_left(self.starts, start - self.longest)  # turns[:lo] end before it
        overlap: dict[str, float] = {}
        for t in self.turns[lo:hi]:
            overlap[t.speaker] = overlap.get(t.speaker, 0.0) + max(0.0, min(end, t.end) - max(start, t.start))
        best = max(overlap, key=overlap.__getitem__, default=None)
        if best is not None and overlap[best] > 0:
            return best
        # the nearest is the last-ending turn that starts before the span's end, or the next to start
        near = self.reach[max(hi - 1, 0) : hi] + self.turns[hi : hi + 1]
        return min(near, key=lambda t: max(t.start - end, start - t.end, 0.0)).speaker


def _split(segment: Segment, timeline: _Timeline) -> list[Segment]:
    """``segment`` with the diarizer's speakers on it, one piece per run of one speaker's words.

    A piece gets its words' text and times (the first keeps the segment's start, the last its end)
    and no tokens, since where a token ends between two words is not known; the decoder's figures
    are the segment's. A segment without words is attributed by its own time span, whole.
    """
    if not segment.words:
        return [replace(segment, speaker=timeline.speaker_of(segment.start, segment.end))]
    words = [replace(w, speaker=timeline.speaker_of(w.start, w.end)) for w in segment.words]
    runs = [tuple(run) for _, run in groupby(words, key=lambda w: w.speaker)]
    if len(runs) == 1:
        return [replace(segment, words=runs[0], speaker=runs[0][0].speaker)]
    return [
        replace(
            segment,
            start=segment.start if i == 0 else run[0].start,
            end=segment.end if i == len(runs) - 1 else run[-1].end,
            text="".join(w.word for w in run),
            tokens=(),
            words=run,
            speaker=run[0].speaker,
        )
        for i, run in enumerate(runs)
    ]


def _names(segments: Sequence[Segment]) -> dict[str, str]:
    """The diarizer's label -> ``SPEAKER_00``, ``SPEAKER_01``, ... in order of first appearance, so
    the names do not depend on how the diarizer numbers; a speaker with no word gets no name."""
    seen = dict.fromkeys(s.speaker for s in segments if s.speaker is not None)
    return {old: f"SPEAKER_{i:02d}" for i, old in enumerate(seen)}


def _relabel(segment: Segment, index: int, names: dict[str, str]) -> Segment:
    """``segment`` as the ``index``-th of the transcript, with its and its words' speakers renamed."""
    words = None if segment.words is None else tuple(replace(w, speaker=_name(w, names)) for w in segment.words)
    return replace(segment, id=index, words=words, speaker=_name(segment, names))


def _name(item: Segment | Word, names: dict[str, str]) -> str | None:
    return None if item.speaker is None else names[item.speaker]


def _talk_s(turns: Sequence[Turn], speaker: str) -> float:
    """Seconds ``speaker`` talks: the union of their turns, so turns of one speaker that the
    diarizer let overlap are not counted twice (rounded to 0.01 s)."""
    total, reach = 0.0, float("-inf")
    for turn in sorted((t for t in turns if t.speaker == speaker and t.end > t.start), key=lambda t: t.start):
        if turn.end > reach:
            total += turn.end - max(turn.start, reach)
            reach = turn.end
    return round(total, 2)
