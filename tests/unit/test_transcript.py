"""whisperd.transcript: whisper's result dict in, the same dict out, key for key and value for
value, so whisper's writers write the files they wrote from the engines' dicts."""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import pytest

from whisperd import whisper_modules
from whisperd.transcript import Segment, SpeakerTime, Transcript, Word

FORMATS = ("json", "txt", "srt", "vtt", "tsv")


def whisper_result(words: bool = True) -> dict[str, Any]:
    """A result as openai-whisper's ``model.transcribe`` returns it (its key order; word timing's
    ``max(0, ...)`` can leave an int start)."""
    segments: list[dict[str, Any]] = [
        {"id": 0, "seek": 0, "start": 0.0, "end": 2.5, "text": " Hola,", "tokens": [50364, 22637, 11],
         "temperature": 0.0, "avg_logprob": -0.21, "compression_ratio": 0.8, "no_speech_prob": 0.01},
        {"id": 1, "seek": 250, "start": 2.5, "end": 4.08, "text": " qué tal.", "tokens": [8057, 4023, 13],
         "temperature": 0.2, "avg_logprob": -0.4, "compression_ratio": 0.9, "no_speech_prob": 0.02},
    ]  # fmt: skip
    if words:
        segments[0]["words"] = [{"word": " Hola,", "start": 0, "end": 2.5, "probability": 0.93}]
        segments[1]["words"] = [
            {"word": " qué", "start": 2.5, "end": 3.1, "probability": 0.8},
            {"word": " tal.", "start": 3.1, "end": 4.08, "probability": 0.75},
        ]
    return {"text": " Hola, qué tal.", "segments": segments, "language": "es"}


def written(result: dict[str, Any], fmt: str) -> str:
    out = io.StringIO()
    whisper_modules.load("utils").get_writer(fmt, "/nonexistent").write_result(result, file=out)
    return out.getvalue()


@pytest.mark.parametrize("words", [True, False], ids=["words", "no-words"])
def test_the_whisper_dict_comes_back_as_it_went_in(words: bool) -> None:
    result = whisper_result(words)
    transcript = Transcript.from_whisper(result, speech_s=4.1)
    back = transcript.to_whisper_dict()
    assert json.dumps(back) == json.dumps(result)  # same keys in the same order, same values and types
    assert all(("words" in s) == words for s in back["segments"])
    assert "speech_s" not in back and transcript.speech_s == 4.1


@pytest.mark.parametrize("fmt", FORMATS)
def test_whispers_writers_write_the_same_file_from_the_transcript(fmt: str) -> None:
    result = whisper_result()
    assert written(Transcript.from_whisper(result).to_whisper_dict(), fmt) == written(whisper_result(), fmt)


def test_an_empty_word_list_stays_a_list_and_no_speech_has_no_segments() -> None:
    result = whisper_result()
    result["segments"][0]["words"] = []
    assert Transcript.from_whisper(result).to_whisper_dict()["segments"][0]["words"] == []
    silent = Transcript("", None, (), speech_s=0.0)
    assert silent.to_whisper_dict() == {"text": "", "segments": [], "language": None}


def test_a_transcript_is_typed_and_frozen() -> None:
    transcript = Transcript.from_whisper(whisper_result())
    segment = transcript.segments[1]
    assert isinstance(segment, Segment) and segment.tokens == (8057, 4023, 13)
    assert segment.words == (Word(" qué", 2.5, 3.1, 0.8), Word(" tal.", 3.1, 4.08, 0.75))
    with pytest.raises(dataclasses.FrozenInstanceError):
        transcript.text = "changed"  # type: ignore[misc]


SEGMENT_KEYS = ["id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
                "no_speech_prob"]  # fmt: skip


def test_a_transcript_without_speakers_gives_the_dict_and_files_it_always_gave() -> None:
    """Jobs without diarization: no "speaker" or "speakers" key anywhere, files byte for byte."""
    transcript = Transcript.from_whisper(whisper_result())
    assert transcript.speakers is None and all(s.speaker is None for s in transcript.segments)
    assert all(w.speaker is None for s in transcript.segments for w in s.words or ())
    back = transcript.to_whisper_dict()
    assert list(back) == ["text", "segments", "language"]
    assert [list(s) for s in back["segments"]] == [[*SEGMENT_KEYS, "words"]] * 2
    assert list(back["segments"][1]["words"][0]) == ["word", "start", "end", "probability"]
    assert json.dumps(back) == json.dumps(whisper_result())
    for fmt in FORMATS:
        assert written(back, fmt) == written(whisper_result(), fmt)
    assert written(back, "tsv") == "start\tend\ttext\n0\t2500\tHola,\n2500\t4080\tqué tal.\n"


def test_speakers_are_in_the_dict_after_whispers_keys() -> None:
    plain = Transcript.from_whisper(whisper_result())
    first, second = plain.segments
    hola = dataclasses.replace(first.words[0], speaker="SPEAKER_00")
    transcript = dataclasses.replace(
        plain,
        segments=(
            dataclasses.replace(first, speaker="SPEAKER_00", words=(hola,)),
            dataclasses.replace(second, speaker="SPEAKER_01"),  # its words without one: no key for them
        ),
        speakers=(SpeakerTime("SPEAKER_00", 2.5), SpeakerTime("SPEAKER_01", 1.58)),
    )
    result = transcript.to_whisper_dict()
    assert list(result) == ["text", "segments", "language", "speakers"]
    assert result["speakers"] == [{"speaker": "SPEAKER_00", "talk_s": 2.5}, {"speaker": "SPEAKER_01", "talk_s": 1.58}]
    assert [list(s) for s in result["segments"]] == [[*SEGMENT_KEYS, "words", "speaker"]] * 2
    assert [s["speaker"] for s in result["segments"]] == ["SPEAKER_00", "SPEAKER_01"]
    assert result["segments"][0]["words"] == [
        {"word": " Hola,", "start": 0, "end": 2.5, "probability": 0.93, "speaker": "SPEAKER_00"}
    ]
    assert "speaker" not in result["segments"][1]["words"][0]
    assert Transcript.from_whisper(result) == transcript  # and back
    no_words = dataclasses.replace(transcript.segments[1], words=None).to_whisper_dict()
    assert list(no_words) == [*SEGMENT_KEYS, "speaker"]
    assert Transcript("", None, (), speakers=()).to_whisper_dict() == {
        "text": "",
        "segments": [],
        "language": None,
        "speakers": [],
    }
