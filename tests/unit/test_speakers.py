"""whisperd.speakers: a diarizer's turns merged into whisper's transcript (who said what)."""

from __future__ import annotations

import random

import pytest

from whisperd import speakers
from whisperd.speakers import Turn, attribute
from whisperd.transcript import Segment, SpeakerTime, Transcript, Word


def w(word: str, start: float, end: float, speaker: str | None = None) -> Word:
    return Word(word, start, end, 0.9, speaker)


def seg(id: int, start: float, end: float, words: tuple[Word, ...] | None, text: str | None = None) -> Segment:
    """A segment with decoder figures of its own (so a test sees they are copied), text from its words."""
    text = "".join(x.word for x in words or ()) if text is None else text
    return Segment(id, 300 * id, start, end, text, (50364 + id, 11), 0.2 * id, -0.3, 1.4, 0.05, words)


def transcript(*segments: Segment) -> Transcript:
    return Transcript("".join(s.text for s in segments), "en", segments, speech_s=12.5)


def word_speakers(result: Transcript) -> list[tuple[str, str | None]]:
    return [(x.word, x.speaker) for s in result.segments for x in s.words or ()]


def test_a_word_goes_to_the_speaker_whose_turns_overlap_it_most_summed() -> None:
    # " across" (1.0-2.0): A's two turns cover 0.3 + 0.3 = 0.6 of it, B's one turn 0.4
    t = transcript(seg(0, 0.0, 3.0, (w(" one", 0.0, 0.8), w(" across", 1.0, 2.0), w(" two", 2.2, 3.0))))
    turns = [Turn(0.0, 1.3, "A"), Turn(1.3, 1.7, "B"), Turn(1.7, 2.1, "A"), Turn(2.1, 3.0, "B")]
    assert word_speakers(attribute(t, turns)) == [
        (" one", "SPEAKER_00"),
        (" across", "SPEAKER_00"),
        (" two", "SPEAKER_01"),
    ]


def test_a_word_no_turn_overlaps_goes_to_the_nearest_turn() -> None:
    words = (
        w(" early", 0.0, 0.4),  # before every turn: B's first starts 0.2 after it, A's 2.9
        w(" gap", 2.9, 3.1),  # between B (ends 1.9 before it) and A (starts 0.2 after it)
        w(" late", 9.0, 9.5),  # after every turn: A's ends 4.0 before it, B's last 1.0
        w(" touch", 8.0, 8.0),  # zero length, at the end of B's last turn
    )
    t = transcript(seg(0, 0.0, 9.5, words))
    turns = [Turn(3.3, 5.0, "A"), Turn(0.6, 1.0, "B"), Turn(6.0, 8.0, "B")]
    result = attribute(t, turns)
    assert word_speakers(result) == [
        (" early", "SPEAKER_00"),
        (" gap", "SPEAKER_01"),
        (" late", "SPEAKER_00"),
        (" touch", "SPEAKER_00"),
    ]
    assert result.speakers == (SpeakerTime("SPEAKER_00", 2.4), SpeakerTime("SPEAKER_01", 1.7))


def test_a_segment_is_split_where_the_speaker_changes() -> None:
    first = seg(0, 0.0, 2.0, (w(" Yes.", 0.1, 0.6), w(" No", 1.0, 1.3), w(" way.", 1.3, 1.9)))
    second = seg(1, 2.0, 3.0, (w(" Sure.", 2.1, 2.8),))
    t = transcript(first, second)
    result = attribute(t, [Turn(0.0, 0.8, "SPEAKER_04"), Turn(0.9, 3.0, "SPEAKER_02")])
    a, b = "SPEAKER_00", "SPEAKER_01"
    no_way = (w(" No", 1.0, 1.3, b), w(" way.", 1.3, 1.9, b))
    assert result.segments == (
        # the first piece keeps the segment's start, the last its end; split pieces have no tokens
        Segment(0, 0, 0.0, 0.6, " Yes.", (), 0.0, -0.3, 1.4, 0.05, (w(" Yes.", 0.1, 0.6, a),), a),
        Segment(1, 0, 1.0, 2.0, " No way.", (), 0.0, -0.3, 1.4, 0.05, no_way, b),
        # unsplit: its own times, text and tokens, only the id renumbered
        Segment(2, 300, 2.0, 3.0, " Sure.", (50365, 11), 0.2, -0.3, 1.4, 0.05, (w(" Sure.", 2.1, 2.8, b),), b),
    )  # fmt: skip
    assert result.text == t.text == " Yes. No way. Sure."
    assert result.language == "en" and result.speech_s == 12.5
    assert result.speakers == (SpeakerTime(a, 0.8), SpeakerTime(b, 2.1))


def test_a_piece_takes_its_words_text_even_where_the_segment_text_differs() -> None:
    t = transcript(seg(0, 0.0, 2.0, (w(" Hi", 0.0, 0.5), w(" there", 1.0, 2.0)), text=" Hi, there!"))
    result = attribute(t, [Turn(0.0, 0.7, "x"), Turn(0.8, 2.0, "y")])
    assert [(s.text, s.start, s.end) for s in result.segments] == [(" Hi", 0.0, 0.5), (" there", 1.0, 2.0)]
    assert result.text == " Hi, there!"


def test_labels_are_renamed_by_first_appearance_in_the_transcript() -> None:
    # the diarizer lists SPEAKER_01 first and its turn starts first, but over silence:
    # the first word is SPEAKER_05's
    t = transcript(
        seg(0, 1.0, 2.0, (w(" first", 1.0, 2.0),)),
        seg(1, 3.0, 4.0, (w(" second", 3.0, 4.0),)),
        seg(2, 4.0, 5.0, (w(" third", 4.0, 5.0),)),
    )
    turns = [Turn(0.0, 0.9, "SPEAKER_01"), Turn(3.0, 4.0, "SPEAKER_01"), Turn(4.0, 5.0, "SPEAKER_03"),
             Turn(1.0, 2.0, "SPEAKER_05")]  # fmt: skip
    result = attribute(t, turns)
    assert [s.speaker for s in result.segments] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    assert result.speakers == (
        SpeakerTime("SPEAKER_00", 1.0),  # was SPEAKER_05
        SpeakerTime("SPEAKER_01", 1.9),  # was SPEAKER_01: both its turns count, the silent one too
        SpeakerTime("SPEAKER_02", 1.0),  # was SPEAKER_03
    )


def test_a_speaker_who_gets_no_word_is_dropped() -> None:
    t = transcript(seg(0, 0.0, 1.0, (w(" a", 0.0, 1.0),)), seg(1, 5.0, 6.0, (w(" b", 5.0, 6.0),)))
    # "cough" talks only where nobody said a word, "echo" less than "main" over every word
    turns = [Turn(0.0, 6.0, "main"), Turn(2.0, 4.0, "cough"), Turn(0.5, 1.0, "echo"), Turn(5.0, 5.2, "echo")]
    result = attribute(t, turns)
    assert result.speakers == (SpeakerTime("SPEAKER_00", 6.0),)
    assert [s.speaker for s in result.segments] == ["SPEAKER_00", "SPEAKER_00"]


def test_talk_time_is_the_union_of_a_speakers_overlapping_turns() -> None:
    t = transcript(seg(0, 0.0, 1.0, (w(" a", 0.0, 1.0),)), seg(1, 9.0, 10.0, (w(" b", 9.0, 10.0),)))
    turns = [
        Turn(0.0, 2.0, "A"),
        Turn(1.0, 3.0, "A"),  # overlaps A's first: 1 s more, not 2
        Turn(1.5, 2.5, "A"),  # inside A's union: nothing more
        Turn(5.0, 6.333, "A"),
        Turn(1.5, 2.5, "B"),  # overlapping A's: counts for B all the same
        Turn(9.0, 10.0, "B"),
    ]
    assert attribute(t, turns).speakers == (SpeakerTime("SPEAKER_00", 4.33), SpeakerTime("SPEAKER_01", 2.0))


def test_no_turns_leaves_the_transcript_as_it_is_with_no_speakers() -> None:
    t = transcript(seg(0, 0.0, 2.0, (w(" Yes.", 0.1, 0.6), w(" No.", 1.0, 1.9))), seg(1, 2.0, 3.0, None))
    result = attribute(t, [])
    assert result.speakers == ()
    assert result.segments == t.segments and result.text == t.text and result.speech_s == 12.5
    assert result == Transcript(t.text, t.language, t.segments, t.speech_s, speakers=())


def test_a_segment_without_words_goes_to_the_speaker_of_its_own_span() -> None:
    t = transcript(
        seg(0, 0.0, 2.0, None, text=" not asked for"),  # A 0.5 s of it, B 1.5 s
        seg(1, 2.0, 3.0, (), text=" no words"),  # only A
        seg(2, 6.0, 7.0, None, text=" after all"),  # nobody: B's turn ends nearer
    )
    result = attribute(t, [Turn(0.0, 0.5, "A"), Turn(0.5, 2.0, "B"), Turn(2.0, 3.0, "A"), Turn(4.0, 5.5, "B")])
    assert [(s.id, s.text, s.speaker, s.words, s.tokens) for s in result.segments] == [
        (0, " not asked for", "SPEAKER_00", None, (50364, 11)),
        (1, " no words", "SPEAKER_01", (), (50365, 11)),
        (2, " after all", "SPEAKER_00", None, (50366, 11)),
    ]
    assert result.speakers == (SpeakerTime("SPEAKER_00", 3.0), SpeakerTime("SPEAKER_01", 1.5))


def test_ids_run_over_the_whole_transcript_after_splits() -> None:
    t = transcript(
        seg(0, 0.0, 2.0, (w(" a", 0.0, 0.5), w(" b", 1.5, 2.0))),
        seg(1, 2.0, 3.0, (w(" c", 2.0, 2.5), w(" d", 2.6, 3.0))),
        seg(2, 3.0, 4.0, (w(" e", 3.0, 4.0),)),
    )
    turns = [Turn(0.0, 1.0, "x"), Turn(1.0, 2.55, "y"), Turn(2.55, 4.0, "x")]
    result = attribute(t, turns)
    assert [(s.id, s.text, s.speaker) for s in result.segments] == [
        (0, " a", "SPEAKER_00"),
        (1, " b", "SPEAKER_01"),
        (2, " c", "SPEAKER_01"),
        (3, " d", "SPEAKER_00"),
        (4, " e", "SPEAKER_00"),
    ]


def test_the_dict_of_an_attributed_transcript_names_every_speaker() -> None:
    t = transcript(seg(0, 0.0, 1.0, (w(" a", 0.0, 1.0),)))
    result = attribute(t, [Turn(0.0, 1.0, "x")]).to_whisper_dict()
    assert result["speakers"] == [{"speaker": "SPEAKER_00", "talk_s": 1.0}]
    assert result["segments"][0]["speaker"] == "SPEAKER_00"
    assert result["segments"][0]["words"][0] == {
        "word": " a",
        "start": 0.0,
        "end": 1.0,
        "probability": 0.9,
        "speaker": "SPEAKER_00",
    }


@pytest.mark.parametrize("seed", range(5))
def test_the_timeline_finds_what_a_scan_of_every_turn_finds(seed: int) -> None:
    """The sorted index (``_Timeline``) against the definition, on random overlapping turns."""
    rng = random.Random(seed)
    turns = []
    for _ in range(60):
        start = rng.uniform(0, 300)
        turns.append(Turn(start, start + rng.choice([rng.uniform(0.1, 4), rng.uniform(4, 60)]), rng.choice("ABCD")))
    timeline = speakers._Timeline(turns)
    for _ in range(500):
        start = rng.uniform(-10, 380)
        end = start + rng.choice([0.0, rng.uniform(0, 1.5)])
        got = timeline.speaker_of(start, end)
        overlap: dict[str, float] = {}
        for t in turns:
            overlap[t.speaker] = overlap.get(t.speaker, 0.0) + max(0.0, min(end, t.end) - max(start, t.start))
        if max(overlap.values()) > 0:
            assert overlap[got] == pytest.approx(max(overlap.values()), abs=1e-9)
        else:
            gap = {t: max(t.start - end, start - t.end, 0.0) for t in turns}
            nearest = min(gap.values())
            assert min(g for t, g in gap.items() if t.speaker == got) == pytest.approx(nearest, abs=1e-9)
