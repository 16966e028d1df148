"""whisperd.speaker_writers: the result files of a diarized transcript, each format's full text."""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import pytest

from whisperd import whisper_modules
from whisperd.results import ResultStore
from whisperd.speaker_writers import get_speaker_writer
from whisperd.transcript import Segment, SpeakerTime, Transcript, Word

A, B = "SPEAKER_00", "SPEAKER_01"


def segment(id: int, start: float, end: float, speaker: str | None, *words: tuple[str, float, float]) -> Segment:
    text = "".join(word for word, _, _ in words)
    timed = tuple(Word(word, s, e, 0.9, speaker) for word, s, e in words)
    return Segment(id, 0, start, end, text, (1, 2), 0.0, -0.25, 1.2, 0.03, timed, speaker)


def two_speakers(words: bool = True) -> dict[str, Any]:
    """A conversation as ``attribute`` leaves it: A twice, B, then A again."""
    segments = (
        segment(0, 0.0, 1.2, A, (" Hello", 0.0, 0.5), (" there.", 0.5, 1.2)),
        segment(1, 1.2, 2.0, A, (" How", 1.3, 1.5), (" are", 1.5, 1.7), (" you?", 1.7, 2.0)),
        segment(2, 2.5, 3.5, B, (" Fine,", 2.5, 2.9), (" thanks.", 2.9, 3.5)),
        segment(3, 3.6, 4.0, A, (" Good.", 3.6, 4.0)),
    )
    if not words:
        segments = tuple(dataclasses.replace(s, words=None) for s in segments)
    text = "".join(s.text for s in segments)
    return Transcript(text, "en", segments, speakers=(SpeakerTime(A, 2.4), SpeakerTime(B, 1.0))).to_whisper_dict()


def written(result: dict[str, Any], fmt: str, options: dict[str, Any] | None = None) -> str:
    out = io.StringIO()
    get_speaker_writer(fmt, "/nonexistent").write_result(result, file=out, options=options)
    return out.getvalue()


def whispers(result: dict[str, Any], fmt: str, options: dict[str, Any] | None = None) -> str:
    out = io.StringIO()
    whisper_modules.load("utils").get_writer(fmt, "/nonexistent").write_result(result, file=out, options=options)
    return out.getvalue()


VTT = """WEBVTT

00:00.000 --> 00:01.200
<v SPEAKER_00>Hello there.

00:01.300 --> 00:02.000
<v SPEAKER_00>How are you?

00:02.500 --> 00:03.500
<v SPEAKER_01>Fine, thanks.

00:03.600 --> 00:04.000
<v SPEAKER_00>Good.

"""

SRT = """1
00:00:00,000 --> 00:00:01,200
[SPEAKER_00] Hello there.

2
00:00:01,300 --> 00:00:02,000
[SPEAKER_00] How are you?

3
00:00:02,500 --> 00:00:03,500
[SPEAKER_01] Fine, thanks.

4
00:00:03,600 --> 00:00:04,000
[SPEAKER_00] Good.

"""

TXT = """SPEAKER_00: Hello there. How are you?
SPEAKER_01: Fine, thanks.
SPEAKER_00: Good.
"""

TSV = """start\tend\tspeaker\ttext
0\t1200\tSPEAKER_00\tHello there.
1200\t2000\tSPEAKER_00\tHow are you?
2500\t3500\tSPEAKER_01\tFine, thanks.
3600\t4000\tSPEAKER_00\tGood.
"""


@pytest.mark.parametrize("fmt, expected", [("vtt", VTT), ("srt", SRT), ("txt", TXT), ("tsv", TSV)])
def test_each_format_names_the_speakers(fmt: str, expected: str) -> None:
    assert written(two_speakers(), fmt) == expected


def test_json_is_whispers_with_the_speakers_in_it() -> None:
    result = two_speakers()
    text = written(result, "json")
    assert text == json.dumps(result) == whispers(result, "json")
    assert json.loads(text)["speakers"] == [{"speaker": A, "talk_s": 2.4}, {"speaker": B, "talk_s": 1.0}]
    assert [s["speaker"] for s in json.loads(text)["segments"]] == [A, A, B, A]
    assert json.loads(text)["segments"][2]["words"][0] == {"word": " Fine,", "start": 2.5, "end": 2.9,
                                                           "probability": 0.9, "speaker": B}  # fmt: skip


def test_subtitles_without_words_take_the_segments_times() -> None:
    result = two_speakers(words=False)
    assert "words" not in result["segments"][0]
    assert written(result, "vtt").split("\n\n")[1:3] == [
        "00:00.000 --> 00:01.200\n<v SPEAKER_00>Hello there.",
        "00:01.200 --> 00:02.000\n<v SPEAKER_00>How are you?",
    ]
    assert written(result, "srt").split("\n\n")[2] == "3\n00:00:02,500 --> 00:00:03,500\n[SPEAKER_01] Fine, thanks."


def test_a_cue_never_spans_two_speakers_with_whispers_line_options() -> None:
    # whisper's own writer, free to fill two lines of 40, puts it all in one cue
    options = {"max_line_width": 40, "max_line_count": 2}
    result = two_speakers()
    assert (
        whispers(result, "srt", options)
        == "1\n00:00:00,000 --> 00:00:04,000\nHello there. How are you? Fine, thanks.\nGood.\n\n"
    )
    assert (
        written(result, "srt", options)
        == """1
00:00:00,000 --> 00:00:02,000
[SPEAKER_00] Hello there. How are you?

2
00:00:02,500 --> 00:00:03,500
[SPEAKER_01] Fine, thanks.

3
00:00:03,600 --> 00:00:04,000
[SPEAKER_00] Good.

"""
    )


def test_a_turn_is_joined_as_whisper_joins_text_in_a_language_without_spaces() -> None:
    segments = (segment(0, 0.0, 1.0, A, ("こんにちは。", 0.0, 1.0)), segment(1, 1.0, 2.0, A, ("元気?", 1.0, 2.0)))
    result = Transcript("こんにちは。元気?", "ja", segments, speakers=(SpeakerTime(A, 2.0),)).to_whisper_dict()
    assert written(result, "txt") == "SPEAKER_00: こんにちは。元気?\n"


def test_tsv_keeps_whispers_conventions() -> None:
    result = two_speakers()
    result["segments"] = result["segments"][2:3]
    result["segments"][0].update(start=2.5004, end=3.4996, text=" Fine,\tthanks. ")
    assert written(result, "tsv") == "start\tend\tspeaker\ttext\n2500\t3500\tSPEAKER_01\tFine, thanks.\n"


def test_segments_without_a_speaker_are_written_as_whisper_writes_them() -> None:
    """The diarizer heard nobody (``speakers=()``): no names, and whisper's lines."""
    result = two_speakers()
    for s in result["segments"]:
        del s["speaker"]
    result["speakers"] = []
    for fmt in ("vtt", "srt", "txt", "json"):
        assert written(result, fmt) == whispers(result, fmt)
    assert written(result, "txt") == "Hello there.\nHow are you?\nFine, thanks.\nGood.\n"
    assert written(result, "tsv").splitlines()[:2] == ["start\tend\tspeaker\ttext", "0\t1200\t\tHello there."]


def test_an_unknown_format_is_refused_as_whisper_refuses_it() -> None:
    with pytest.raises(KeyError):
        get_speaker_writer("all", "/nonexistent")


def test_the_store_writes_a_diarized_result_with_its_speakers(tmp_path) -> None:
    store = ResultStore(str(tmp_path))
    formats = ("json", "txt", "srt", "vtt", "tsv")
    paths = store.write("t1", two_speakers(), formats)
    assert {fmt: open(paths[fmt], encoding="utf-8").read() for fmt in formats} == {
        "json": json.dumps(two_speakers()),
        "txt": TXT,
        "srt": SRT,
        "vtt": VTT,
        "tsv": TSV,
    }
    nobody = {**two_speakers(), "speakers": []}  # diarized, nobody heard: still the speaker column
    for s in nobody["segments"]:
        del s["speaker"]
    paths = store.write("t3", nobody, ("tsv",))
    assert open(paths["tsv"], encoding="utf-8").read().splitlines()[:2] == [
        "start\tend\tspeaker\ttext",
        "0\t1200\t\tHello there.",
    ]
    plain = two_speakers()
    del plain["speakers"]  # not diarized: whisper's writers, whatever the segments carry
    paths = store.write("t2", plain, ("txt", "tsv"))
    assert open(paths["txt"], encoding="utf-8").read() == "Hello there.\nHow are you?\nFine, thanks.\nGood.\n"
    assert open(paths["tsv"], encoding="utf-8").read().splitlines()[1] == "0\t1200\tHello there."
