"""Result files of a diarized transcript: whisper's own writers, with the speaker on every cue and line.

A result dict with ``speakers`` (``Transcript.to_whisper_dict`` of an attributed transcript) has a
``speaker`` on each segment. The subtitle writers run whisper's cue iteration over one speaker's
turn at a time, so a cue never spans two speakers and whisper's options (line width, highlighted
words) and timestamps stay whisper's; only the cue's text gets the speaker: a WebVTT voice tag
(``<v SPEAKER_00>``, which players show as the speaker's name), ``[SPEAKER_00]`` in srt. txt has
one line per turn, tsv a speaker column, json is whisper's as is (the speakers are in the dict).
A segment without a speaker (the diarizer heard nobody) is written as whisper writes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import groupby
from typing import Any, TextIO

from whisperd import whisper_modules

utils = whisper_modules.load("utils")

Segments = list[dict[str, Any]]


def turns(result: dict[str, Any]) -> Iterator[tuple[str | None, Segments]]:
    """The result's segments in turns: runs of consecutive segments of one speaker."""
    for speaker, run in groupby(result["segments"], key=lambda s: s.get("speaker")):
        yield speaker, list(run)


class _SpeakerCues:
    """For whisper's subtitle writers: its cues, one turn at a time, with ``cue`` naming the speaker
    in each cue's text. Whisper's ``write_result`` writes them as it writes its own."""

    cue: str  # the cue text, from the speaker's label and whisper's text

    def iterate_result(self, result: dict[str, Any], options: dict | None = None, **kwargs: Any) -> Iterator:
        for speaker, segments in turns(result):
            cues = super().iterate_result({**result, "segments": segments}, options, **kwargs)  # type: ignore[misc]
            for start, end, text in cues:
                yield start, end, text if speaker is None else self.cue.format(speaker=speaker, text=text)


class SpeakerVTT(_SpeakerCues, utils.WriteVTT):
    """WebVTT, each cue in its speaker's voice tag: ``<v SPEAKER_00>text``."""

    cue = "<v {speaker}>{text}"


class SpeakerSRT(_SpeakerCues, utils.WriteSRT):
    """SubRip, each cue's text after its speaker: ``[SPEAKER_00] text``."""

    cue = "[{speaker}] {text}"


class SpeakerTXT(utils.WriteTXT):
    """One line per turn, ``SPEAKER_00: text``: a reader follows who talks, not where whisper cut.

    The turn's segment texts are joined as whisper joins a transcript's (each carries its own
    leading space, none in languages written without spaces) and stripped, as whisper's lines are.
    """

    def write_result(self, result: dict[str, Any], file: TextIO, options: dict | None = None, **kwargs: Any) -> None:
        lines: Segments = []
        for speaker, segments in turns(result):
            if speaker is None:
                lines.extend(segments)
            else:
                lines.append({"text": f"{speaker}: " + "".join(s["text"] for s in segments).strip()})
        super().write_result({**result, "segments": lines}, file, options, **kwargs)


class SpeakerTSV(utils.WriteTSV):
    """Whisper's tsv with a speaker column, ``start\\tend\\tspeaker\\ttext``: times in integer
    milliseconds and tabs in the text made spaces, as whisper's; empty for a segment without one."""

    def write_result(self, result: dict[str, Any], file: TextIO, options: dict | None = None, **kwargs: Any) -> None:
        print("start", "end", "speaker", "text", sep="\t", file=file)
        for segment in result["segments"]:
            start, end = round(1000 * segment["start"]), round(1000 * segment["end"])
            text = segment["text"].strip().replace("\t", " ")
            print(start, end, segment.get("speaker") or "", text, sep="\t", file=file, flush=True)


WRITERS = {
    "json": utils.WriteJSON,
    "vtt": SpeakerVTT,
    "srt": SpeakerSRT,
    "txt": SpeakerTXT,
    "tsv": SpeakerTSV,
}


def get_speaker_writer(fmt: str, output_dir: str) -> Any:
    """Whisper's ``get_writer`` for a result with speakers: ``write_result(result, file)`` writes it.

    No ``all``: a job names its formats (``whisperd.wire.FORMATS``); another name is a KeyError,
    as in whisper's.
    """
    return WRITERS[fmt](output_dir)
