"""The engines that run Whisper: one small class each, behind one interface.

``openai-whisper`` (the default, what the product was specified with) runs OpenAI's PyTorch
code on a ``.pt`` checkpoint; ``faster-whisper`` runs the same weights converted to CTranslate2
(int8 on a CPU: ~3× less memory, and beam search at little extra cost). Both take 16 kHz mono
audio and a ``Request`` and return a ``whisperd.transcript.Transcript`` (whisper's ``text``,
``language`` and ``segments``, with ``words`` when asked, and ``speech_s`` when the speech gate
ran), so the writers, the pipeline and the worker never know which one ran.

Only worker processes import this module's engines, after the fork: the supervisor imports
neither torch nor ctranslate2.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from whisperd import models
from whisperd.config import ModelConfig
from whisperd.transcript import Segment, Transcript
from whisperd.wire import SAMPLE_RATE

WINDOW_S = 30  # Whisper's window
# Short audio in a short window (``transcribe.short_window``): Whisper's encoder costs the same for
# 2 s of speech as for 30 s, because every window is padded to 30 s. A recording whose audio fits
# in SHORT_WINDOW_MAX_S (with SHORT_WINDOW_PAD_S after it) is encoded in a window of that length,
# never less than SHORT_WINDOW_FLOOR_S. Measured on the real clips with OpenAI's base weights
# (bench/RESULTS.md, "Short window"): floors of 5-10 s gave the same WER as 30 s, and a window cut
# to the clip + 2 s with no floor made a 2 s clip invent 81 words; 20-30 s windows save little
# and a changed window is a changed input (the 26.7 s clip moved by two words either way).
SHORT_WINDOW_FLOOR_S = 10
SHORT_WINDOW_PAD_S = 1
SHORT_WINDOW_MAX_S = 20
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
    short_window: bool = True


def window_s(samples: int, short_window: bool = True) -> int:
    """The encoder window for audio of ``samples`` samples: Whisper's 30 s, or a short one."""
    if not short_window:
        return WINDOW_S
    needed = math.ceil(samples / SAMPLE_RATE + SHORT_WINDOW_PAD_S)
    window = max(SHORT_WINDOW_FLOOR_S, needed)
    return window if window <= SHORT_WINDOW_MAX_S else WINDOW_S


# How long an idle OpenMP thread spins before it sleeps. torch and CTranslate2 both use GNU OpenMP
# (libgomp), whose default spins for up to 300 000 iterations: on a host where other processes
# want the cores, a worker's threads spin while they wait for one that is not running, and the
# worker runs 4x slower beside two busy processes. Passive waiting (0) fixes that but costs up to
# 9 % on an idle host; 10 000 kept the idle speed and most of the loaded one (measured,
# docs/performance.md "Sizing a host"). An OMP_WAIT_POLICY or GOMP_SPINCOUNT already in the environment wins.
SPIN_COUNT = "10000"


def thread_env(threads: int, environ: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, str]:
    """Environment that caps OpenMP/MKL pools and their spinning; set before torch or ctranslate2
    is imported (libgomp reads it once, when it is loaded)."""
    env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        env["GOMP_SPINCOUNT"] = SPIN_COUNT
    return env


def resolve_device(setting: str, cuda_available: bool) -> str:
    if setting == "auto":
        return "cuda" if cuda_available else "cpu"
    return setting


class Engine:
    """Loads the configured model on ``device`` with ``threads`` CPU threads."""

    name = ""
    # What transcribe.short_window = "auto" means here: on where the short window met its goals
    # (faster and no more wrong words on the real clips, bench/RESULTS.md "Real hosts").
    short_window_by_default = False

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

    def transcribe(self, audio: np.ndarray, request: Request) -> Transcript:
        raise NotImplementedError


class OpenAIWhisper(Engine):
    """openai-whisper's ``model.transcribe``; the speech gate is whisperd's (``whisperd.speech``)."""

    name = "openai-whisper"
    short_window_by_default = False  # 1.62x on short clips, but its greedy decoder misread a word more

    def __init__(self, cfg: ModelConfig, threads: int, device: str | None) -> None:
        super().__init__(cfg, threads, device)
        import torch
        import whisper

        self._torch = torch
        self._whisper = whisper
        torch.set_num_threads(threads)
        self.device = device or resolve_device(cfg.device, torch.cuda.is_available())
        self.model = models.load(cfg, self.device)
        self.window = _install_windowed_encoder(self.model)
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

    def transcribe(self, audio: np.ndarray, request: Request) -> Transcript:
        self._torch.set_num_threads(self.threads)  # per calling thread with OpenMP, so set it here
        if request.gate is None:
            return Transcript.from_whisper(self._transcribe(audio, request))
        from whisperd import speech

        gate = request.gate
        found = speech.find_speech(audio, gate.threshold, gate.min_silence_ms, gate.speech_pad_ms)
        if not found.chunks:
            return Transcript("", request.language, (), speech_s=0.0)
        result = self._transcribe(found.audio, request)
        found.restore(result)
        return Transcript.from_whisper(result, speech_s=round(found.seconds, 3))

    def _transcribe(self, audio: np.ndarray, request: Request) -> dict[str, Any]:
        """whisper's own result dict for ``audio`` (the gate's timestamps are restored on it)."""
        kwargs = dict(request.guards)
        if request.beam_size:
            kwargs.update(beam_size=request.beam_size, best_of=request.beam_size)
        self._progress = request.progress
        self.window.seconds = window_s(len(audio), request.short_window)
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
            self.window.seconds = WINDOW_S


def _install_windowed_encoder(model: Any) -> Any:
    """Put a windowed encoder in place of ``model.encoder``; returns it (its ``seconds`` is the window)."""
    import torch

    class WindowedEncoder(torch.nn.Module):
        """Whisper's audio encoder, run on the first ``seconds`` of its 30 s input.

        whisper pads every window to 30 s and its encoder checks the input against its positional
        embedding, so a short window cannot be had by passing less. This wrapper cuts the padded mel
        to the window and the embedding to match for that call; the decoder attends to however many
        frames it gets. Nothing of whisper is changed, and at ``seconds = 30`` it is the encoder
        itself. One job at a time per process.
        """

        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.inner = encoder
            self.full = encoder.positional_embedding
            self.seconds = WINDOW_S

        def forward(self, mel: Any) -> Any:
            frames = self.seconds * 100  # 100 mel frames a second; the encoder halves them
            if self.seconds >= WINDOW_S or mel.shape[-1] < frames:
                return self.inner(mel)
            self.inner.positional_embedding = self.full[: frames // 2]
            try:
                return self.inner(mel[..., :frames])
            finally:
                self.inner.positional_embedding = self.full

    model.encoder = WindowedEncoder(model.encoder)
    return model.encoder


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
    short_window_by_default = True  # 2.5x on short clips at the same or a lower WER

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
        kind, _, index = self.device.partition(":")
        return _windowed_model_class()(
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

    def transcribe(self, audio: np.ndarray, request: Request) -> Transcript:
        from faster_whisper.vad import VadOptions

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
        # Unbatched, the window follows the speech the gate kept (the model sees it when it computes
        # the features); batched, each piece is its own window, so only a whole recording that fits decides.
        batched = self.batched is not None
        self.model.short_window = request.short_window and not batched
        self.model.window_s = window_s(len(audio), request.short_window) if batched else WINDOW_S
        try:
            return self._transcribe(audio, request, beam, vad, batching)
        finally:
            self.model.window_s, self.model.short_window = WINDOW_S, False

    def _transcribe(
        self, audio: np.ndarray, request: Request, beam: int, vad: Any, batching: dict[str, Any]
    ) -> Transcript:
        gate, guards = request.gate, request.guards
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
        text = "".join(s.text for s in segments)
        if gate is None:
            return Transcript(text, info.language, tuple(segments))
        no_speech = not segments and info.duration_after_vad == 0
        language = request.language if no_speech else info.language
        return Transcript(text, language, tuple(segments), speech_s=round(info.duration_after_vad, 3))


def _windowed_model_class() -> type:
    from faster_whisper import WhisperModel

    class WindowedWhisperModel(WhisperModel):
        """faster-whisper's model, encoding the first ``window_s`` of each (30 s, padded) window.

        faster-whisper 1.2 pads every window to 30 s whatever ``chunk_length`` says; CTranslate2's
        encoder takes fewer frames. The window fits the audio the model is given (after the speech
        gate: the speech alone; engines.window_s), so no piece of speech is ever cut; batched, only
        a whole recording that fits sets it.
        """

        window_s = WINDOW_S
        short_window = False  # set per call: the window then follows the audio that reaches the model

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            extract = self.feature_extractor

            class _Features:
                """faster-whisper's feature extractor, telling the model how long its input is: after
                the speech gate that is the speech alone, which the window should fit, not the file."""

                def __getattr__(self, name: str) -> Any:
                    return getattr(extract, name)

                def __call__(inner, audio: np.ndarray, *a: Any, **kw: Any) -> np.ndarray:  # noqa: N805
                    if model.short_window:
                        model.window_s = window_s(len(audio), True)
                    return extract(audio, *a, **kw)

            model = self
            self.feature_extractor = _Features()

        def encode(self, features: np.ndarray) -> Any:
            if self.window_s < WINDOW_S:
                features = features[..., : self.window_s * 100]
            return super().encode(features)

    return WindowedWhisperModel


def _segment(piece: Any) -> Segment:
    """A faster-whisper ``Segment`` (a dataclass with openai-whisper's segment fields) as whisperd's."""
    return Segment.from_whisper(dataclasses.asdict(piece))


ENGINES: dict[str, type[Engine]] = {engine.name: engine for engine in (OpenAIWhisper, FasterWhisper)}


def load(cfg: ModelConfig, threads: int, device: str | None = None) -> Engine:
    """The configured engine with its model loaded."""
    return ENGINES[cfg.engine](cfg, threads, device)
