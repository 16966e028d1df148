"""What an engine hands the pipeline: one recording's transcript, typed, the same for both engines.

openai-whisper returns a dict and faster-whisper typed segments of its own; each engine turns its
answer into a ``Transcript``, so the pipeline and the worker never know which one ran.
``to_whisper_dict`` gives whisper's own result dict back, key for key in whisper's order, for
whisper's writers: the result files are the ones whisper itself would write. Values are kept as
the engine gave them (whisper's word timing can give an int 0 for a start), never converted, so
the files stay byte for byte what they were. ``speech_s`` (how much speech the gate kept) is for
the completion, not the files. A leaf module: nothing here imports torch or ctranslate2.
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

    @classmethod
    def from_whisper(cls, word: dict[str, Any]) -> Word:
        return cls(word["word"], word["start"], word["end"], word["probability"])

    def to_whisper_dict(self) -> dict[str, Any]:
        return {"word": self.word, "start": self.start, "end": self.end, "probability": self.probability}


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
        )

    def to_whisper_dict(self) -> dict[str, Any]:
        segment = {
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
        return segment


@dataclass(frozen=True)
class Transcript:
    """One recording transcribed: whisper's ``text``, ``language`` and ``segments``, and
    ``speech_s``, the seconds of speech the gate kept (None when the gate did not run)."""

    text: str
    language: str | None
    segments: tuple[Segment, ...] = ()
    speech_s: float | None = None

    @classmethod
    def from_whisper(cls, result: dict[str, Any], speech_s: float | None = None) -> Transcript:
        """From whisper's result dict (``model.transcribe``'s)."""
        segments = tuple(Segment.from_whisper(s) for s in result["segments"])
        return cls(result["text"], result.get("language"), segments, speech_s)

    def to_whisper_dict(self) -> dict[str, Any]:
        """Whisper's result dict, for whisper's writers (``speech_s`` is not in it)."""
        return {
            "text": self.text,
            "segments": [s.to_whisper_dict() for s in self.segments],
            "language": self.language,
        }
