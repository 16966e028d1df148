"""The engines that run Whisper: one small class each, behind one interface.

``openai-whisper`` (the default, what the product was specified with) runs OpenAI's PyTorch
code on a ``.pt`` checkpoint; ``faster-whisper`` runs the same weights converted to CTranslate2
(int8 on a CPU: ~3× less memory, and beam search at little extra cost). Both take 16 kHz mono
audio and a ``Request`` and return whisper's result dict (``text``, ``language``, ``segments``
with ``words`` when asked) plus ``speech_s`` when the speech gate ran, so the writers, the
pipeline and the worker never know which one ran.

Only worker processes import this module's engines, after the fork: the supervisor imports
neither torch nor ctranslate2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from whisperd import models
from whisperd.config import ModelConfig

SAMPLE_RATE = 16000
WINDOW_S = 30  # Whisper's window
Progress = Callable[[float], None]  # the fraction of the audio done, 0-1


@dataclass
class SpeechGate:
    """The speech gate's settings (``transcribe.vad_*``)."""

    threshold: float
    min_silence_ms: int
    speech_pad_ms: int


@dataclass
class Request:
    """What to do with one recording, with the job's options already resolved against the config."""

    language: str | None = None
    task: str = "transcribe"
    word_timestamps: bool = False
    initial_prompt: str | None = None
    beam_size: int = 0  # 0 = greedy
    guards: dict[str, Any] = field(default_factory=dict)  # contract.GUARD_OPTIONS, resolved (0 = off is None)
    gate: SpeechGate | None = None
    progress: Progress | None = None


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps OpenMP/MKL pools; must be set before torch or ctranslate2 is imported."""
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def resolve_device(setting: str, cuda_available: bool) -> str:
    if setting == "auto":
        return "cuda" if cuda_available else "cpu"
    return setting


class Engine:
    """Loads the configured model on ``device`` with ``threads`` CPU threads."""

    name = ""

    def __init__(self, cfg: ModelConfig, threads: int, device: str | None) -> None:
        self.cfg = cfg
        self.threads = threads
        os.environ.update(thread_env(threads))

    multilingual: bool
    device: str

    def warm_up(self) -> None:
        """Run the model once, so the first job pays no start-up cost."""
        raise NotImplementedError

    def set_threads(self, threads: int) -> None:
        raise NotImplementedError

    def transcribe(self, audio: np.ndarray, request: Request) -> dict[str, Any]:
        raise NotImplementedError


class OpenAIWhisper(Engine):
    """openai-whisper's ``model.transcribe``; the speech gate is whisperd's (``whisperd.speech``)."""

    name = "openai-whisper"

    def __init__(self, cfg: ModelConfig, threads: int, device: str | None) -> None:
        super().__init__(cfg, threads, device)
        import torch
        import whisper

        self._torch = torch
        self._whisper = whisper
        torch.set_num_threads(threads)
        self.device = device or resolve_device(cfg.device, torch.cuda.is_available())
        self.model = models.load(cfg, self.device)
        self.multilingual = self.model.is_multilingual
        self.fp16 = cfg.fp16 and self.device.startswith("cuda")
        self._progress: Progress | None = None
        # whisper reports its progress through tqdm only: this process's transcribe() gets a bar
        # that forwards it (one job thread per worker process, so one job at a time).
        # (``whisper.transcribe`` is the function; the module is only reachable through sys.modules.)
        sys.modules["whisper.transcribe"].tqdm = _TqdmModule(self)

    def set_threads(self, threads: int) -> None:
        self.threads = threads

    def warm_up(self) -> None:
        whisper = self._whisper
        mel = whisper.log_mel_spectrogram(np.zeros(whisper.audio.N_SAMPLES, np.float32), self.model.dims.n_mels)
        options = whisper.DecodingOptions(
            fp16=self.fp16, sample_len=4, without_timestamps=True, language=None if self.multilingual else "en"
        )
        whisper.decode(self.model, mel.to(self.model.device), options)

    def transcribe(self, audio: np.ndarray, request: Request) -> dict[str, Any]:
        self._torch.set_num_threads(self.threads)  # per calling thread with OpenMP, so set it here
        if request.gate is None:
            return self._transcribe(audio, request)
        from whisperd import speech

        gate = request.gate
        found = speech.find_speech(audio, gate.threshold, gate.min_silence_ms, gate.speech_pad_ms)
        if not found.chunks:
            return {"text": "", "segments": [], "language": request.language, "speech_s": 0.0}
        result = self._transcribe(found.audio, request)
        found.restore(result)
        result["speech_s"] = round(found.seconds, 3)
        return result

    def _transcribe(self, audio: np.ndarray, request: Request) -> dict[str, Any]:
        kwargs = dict(request.guards)
        if request.beam_size:
            kwargs.update(beam_size=request.beam_size, best_of=request.beam_size)
        self._progress = request.progress
        try:
            return self.model.transcribe(
                audio,
                language=request.language,
                task=request.task,
                word_timestamps=request.word_timestamps,
                initial_prompt=request.initial_prompt,
                fp16=self.fp16,
                verbose=None,
                **kwargs,
            )
        finally:
            self._progress = None


class _TqdmModule:
    """Stands in for the ``tqdm`` module inside ``whisper.transcribe``: its bar reports to the engine."""

    def __init__(self, engine: OpenAIWhisper) -> None:
        self.engine = engine

    def tqdm(self, total: int = 0, **_: Any) -> _Bar:
        return _Bar(self.engine._progress, total)


class _Bar:
    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, max(total, 1), 0

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(min(1.0, self.done / self.total))


class FasterWhisper(Engine):
    """faster-whisper (CTranslate2) on a CTranslate2 model directory; its own Silero VAD is the gate."""

    name = "faster-whisper"

    def __init__(self, cfg: ModelConfig, threads: int, device: str | None) -> None:
        super().__init__(cfg, threads, device)
        import ctranslate2

        self.device = device or resolve_device(cfg.device, ctranslate2.get_cuda_device_count() > 0)
        self.compute_type = models.compute_type(cfg, self.device)
        self.path = models.ctranslate2_dir(cfg)
        self.model = self._load()
        self.multilingual = self.model.model.is_multilingual

    def _load(self) -> Any:
        """The model, and with ``model.batch_size`` faster-whisper's batched pipeline on it."""
        from faster_whisper import BatchedInferencePipeline

        model = self._load_model()
        self.batched = BatchedInferencePipeline(model) if self.cfg.batch_size else None
        return model

    def _load_model(self) -> Any:
        from faster_whisper import WhisperModel

        kind, _, index = self.device.partition(":")
        return WhisperModel(
            str(self.path),
            device=kind,
            device_index=int(index or 0),
            compute_type=self.compute_type,
            cpu_threads=self.threads,
            num_workers=1,
            local_files_only=True,
        )

    def set_threads(self, threads: int) -> None:
        """CTranslate2 fixes its thread count when the model is loaded: load it again (from the page cache)."""
        if threads != self.threads:
            self.threads = threads
            os.environ.update(thread_env(threads))
            self.model = self._load()

    def warm_up(self) -> None:
        segments, _ = self.model.transcribe(
            np.zeros(SAMPLE_RATE, np.float32), language=None if self.multilingual else "en", beam_size=1
        )
        list(segments)

    def transcribe(self, audio: np.ndarray, request: Request) -> dict[str, Any]:
        from faster_whisper.vad import VadOptions

        guards = request.guards
        beam = request.beam_size or 1  # faster-whisper's default is beam 5; whisperd's is greedy
        gate = request.gate
        vad = (
            VadOptions(
                threshold=gate.threshold, min_silence_duration_ms=gate.min_silence_ms, speech_pad_ms=gate.speech_pad_ms
            )
            if gate
            else None
        )
        batching: dict[str, Any] = {}
        if self.batched is not None:
            # The batched pipeline decodes each piece of speech as one window of at most 30 s, so
            # the pieces must end at pauses: Silero cuts them at 160 ms pauses (faster-whisper's
            # own batched settings; measured: cutting every 30 s, or at the gate's 2 s pauses with
            # 30 s pieces, lost 5-50 % of the words on the English clips), gate or no gate.
            batching["batch_size"] = self.cfg.batch_size
            threshold = gate.threshold if gate else 0.5
            vad = VadOptions(threshold=threshold, min_silence_duration_ms=160, max_speech_duration_s=WINDOW_S)
        pieces, info = (self.batched or self.model).transcribe(
            audio,
            language=request.language,
            task=request.task,
            beam_size=beam,
            best_of=beam if request.beam_size else 5,
            word_timestamps=request.word_timestamps,
            initial_prompt=request.initial_prompt,
            vad_filter=vad is not None,
            vad_parameters=vad,
            **batching,
            **guards,
        )
        segments = []
        for piece in pieces:
            segments.append(_segment(piece))
            if request.progress is not None and info.duration:
                request.progress(min(1.0, piece.end / info.duration))
        result: dict[str, Any] = {
            "text": "".join(s["text"] for s in segments),
            "segments": segments,
            "language": info.language,
        }
        if gate is not None:
            result["speech_s"] = round(info.duration_after_vad, 3)
            if not segments and info.duration_after_vad == 0:
                result["language"] = request.language
        return result


def _segment(piece: Any) -> dict[str, Any]:
    """A faster-whisper ``Segment`` as the dict openai-whisper returns."""
    segment = {
        "id": piece.id,
        "seek": piece.seek,
        "start": piece.start,
        "end": piece.end,
        "text": piece.text,
        "tokens": list(piece.tokens),
        "temperature": piece.temperature,
        "avg_logprob": piece.avg_logprob,
        "compression_ratio": piece.compression_ratio,
        "no_speech_prob": piece.no_speech_prob,
    }
    if piece.words is not None:
        segment["words"] = [
            {"word": w.word, "start": w.start, "end": w.end, "probability": w.probability} for w in piece.words
        ]
    return segment


ENGINES: dict[str, type[Engine]] = {engine.name: engine for engine in (OpenAIWhisper, FasterWhisper)}


def load(cfg: ModelConfig, threads: int, device: str | None = None) -> Engine:
    """The configured engine with its model loaded."""
    return ENGINES[cfg.engine](cfg, threads, device)
