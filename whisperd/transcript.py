"""What an engine hands the pipeline: one recording's transcript, typed, the same for both engines.

openai-whisper returns a dict and faster-whisper typed segments of its own; each engine turns its
answer into a ``Transcript``, so the pipeline and the worker never know which one ran.
``to_whisper_dict`` gives whisper's own result dict back, key for key in whisper's order, for
whisper's writers: the result files are the ones whisper itself would write. Values are kept as
the engine gave them (whisper's word timing can give an int 0 for a start), never converted, so
the files stay byte for byte what they were. ``speech_s`` (how much speech the gate kept) is for
the completion, not the files. Speaker attribution (``whisperd.speakers``) fills the ``speaker``
fields and ``Transcript.speakers``; they reach the dict only when set, so a job without diarization
writes the files it always wrote. A leaf module: nothing here imports torch or ctranslate2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Word:
    """One word with its timing (``word_timestamps``), as whisper's writers read it."""

    word: str
    start: float
    end: float
    probability: float
    speaker: str | None = None  # None: not diarized (the dict then has no "speaker")

    @classmethod
    def from_whisper(cls, word: dict[str, Any]) -> Word:
        return cls(word["word"], word["start"], word["end"], word["probability"], word.get("speaker"))

    def to_whisper_dict(self) -> dict[str, Any]:
        word = {"word": self.word, "start": self.start, "end": self.end, "probability": self.probability}
        return word if self.speaker is None else {**word, "speaker": self.speaker}


@dataclass(frozen=True)
class Segment:
    """One of whisper's segments: what the writers read (times, text, words) and what the json
    result carries besides (the decoder's figures for it)."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: tuple[Word, ...] | None = None  # None: not asked for (the json result then has no "words")
    speaker: str | None = None  # None: not diarized (the json result then has no "speaker")

    @classmethod
    def from_whisper(cls, segment: dict[str, Any]) -> Segment:
        words = segment.get("words")
        return cls(
            id=segment["id"],
            seek=segment["seek"],
            start=segment["start"],
            end=segment["end"],
            text=segment["text"],
            tokens=tuple(segment["tokens"]),
            temperature=segment["temperature"],
            avg_logprob=segment["avg_logprob"],
            compression_ratio=segment["compression_ratio"],
            no_speech_prob=segment["no_speech_prob"],
            words=None if words is None else tuple(Word.from_whisper(w) for w in words),
            speaker=segment.get("speaker"),
        )

    def to_whisper_dict(self) -> dict[str, Any]:
        segment: dict[str, Any] = {
            "id": self.id,
            "seek": self.seek,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "tokens": list(self.tokens),
            "temperature": self.temperature,
            "avg_logprob": self.avg_logprob,
            "compression_ratio": self.compression_ratio,
            "no_speech_prob": self.no_speech_prob,
        }
        if self.words is not None:
            segment["words"] = [w.to_whisper_dict() for w in self.words]
        if self.speaker is not None:
            segment["speaker"] = self.speaker
        return segment


@dataclass(frozen=True)
class SpeakerTime:
    """One speaker of a diarized transcript and how long they talk (seconds, their turns' union)."""

    speaker: str
    talk_s: float


@dataclass(frozen=True)
class Transcript:
    """One recording transcribed: whisper's ``text``, ``language`` and ``segments``,
    ``speech_s``, the seconds of speech the gate kept (None when the gate did not run), and
    ``speakers``, who talks in it in order of first appearance (None when not diarized)."""

    text: str
    language: str | None
    segments: tuple[Segment, ...] = ()
    speech_s: float | None = None
    speakers: tuple[SpeakerTime, ...] | None = None

    @classmethod
    def from_whisper(cls, result: dict[str, Any], speech_s: float | None = None) -> Transcript:
        """From whisper's result dict (``model.transcribe``'s)."""
        segments = tuple(Segment.from_whisper(s) for s in result["segments"])
        listed = result.get("speakers")
        speakers = None if listed is None else tuple(SpeakerTime(s["speaker"], s["talk_s"]) for s in listed)
        return cls(result["text"], result.get("language"), segments, speech_s, speakers)

    def to_whisper_dict(self) -> dict[str, Any]:
        """Whisper's result dict, for whisper's writers (``speech_s`` is not in it)."""
        result: dict[str, Any] = {
            "text": self.text,
            "segments": [s.to_whisper_dict() for s in self.segments],
            "language": self.language,
        }
        if self.speakers is not None:
            result["speakers"] = [{"speaker": s.speaker, "talk_s": s.talk_s} for s in self.speakers]
        return result
