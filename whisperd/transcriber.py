"""The model: loaded once per worker process, after the fork, and warmed up before consuming.

The engine (``whisperd.engines``: openai-whisper or faster-whisper) runs the model; this class
holds what is the same for both: which languages and tasks a model accepts, and how a job's
options and the ``[transcribe]`` settings become one request.
"""

from __future__ import annotations

import logging

import numpy as np

from whisperd import engines, whisper_modules
from whisperd.config import ModelConfig, TranscribeConfig
from whisperd.contract import GUARD_OPTIONS, ErrorCode, Job, JobError
from whisperd.engines import Progress
from whisperd.transcript import Transcript

log = logging.getLogger("whisperd.worker")


class Transcriber:
    def __init__(self, cfg: ModelConfig, threads: int, device: str | None = None) -> None:
        self.engine = engines.load(cfg, threads, device)
        tokenizer = whisper_modules.load("tokenizer")
        self._languages = tokenizer.LANGUAGES
        self._language_names = tokenizer.TO_LANGUAGE_CODE
        self.device = self.engine.device
        self.name = cfg.name

    @property
    def threads(self) -> int:
        return self.engine.threads

    @threads.setter
    def threads(self, threads: int) -> None:
        self.engine.set_threads(threads)

    def warm_up(self) -> None:
        self.engine.warm_up()

    def language_code(self, job: Job) -> str | None:
        """Map a job's language (code or English name) to whisper's code, or raise unsupported_language."""
        if job.language is None:
            return None
        lang = job.language
        code = lang if lang in self._languages else self._language_names.get(lang)
        if code is None:
            raise JobError(
                ErrorCode.UNSUPPORTED_LANGUAGE,
                f"language {job.language!r} is not supported; use an ISO code such as 'es' or 'en'",
                job.task_id,
            )
        if not self.engine.multilingual and code != "en":
            raise JobError(ErrorCode.UNSUPPORTED_LANGUAGE, f"model {self.name!r} is English-only", job.task_id)
        return code

    def check(self, job: Job) -> None:
        """Reject what this model cannot do before spending time on decoding audio."""
        self.language_code(job)
        if job.task == "translate" and not self.engine.multilingual:
            raise JobError(
                ErrorCode.UNSUPPORTED_TASK, f"model {self.name!r} is English-only: no translate", job.task_id
            )

    def short_window(self, settings: TranscribeConfig) -> bool:
        """``transcribe.short_window``, with "auto" resolved for this engine."""
        if isinstance(settings.short_window, bool):
            return settings.short_window
        return self.engine.short_window_by_default

    def transcribe(
        self, audio: np.ndarray, job: Job, settings: TranscribeConfig | None = None, progress: Progress | None = None
    ) -> Transcript:
        """The transcript of ``audio``. With ``settings.vad`` only the speech goes to Whisper
        (none: no decoding at all), timestamps stay those of ``audio``, and ``speech_s`` says how
        much speech there was; without it the engine sees the whole recording."""
        settings = settings or TranscribeConfig()
        guards = {name: getattr(settings, name) for name in GUARD_OPTIONS}
        guards.update({name: getattr(job, name) for name in GUARD_OPTIONS if getattr(job, name) is not None})
        guards["hallucination_silence_threshold"] = guards["hallucination_silence_threshold"] or None  # 0 = off
        gate = (
            engines.SpeechGate(settings.vad_threshold, settings.vad_min_silence_ms, settings.vad_speech_pad_ms)
            if settings.vad
            else None
        )
        request = engines.Request(
            language=self.language_code(job),
            task=job.task,
            word_timestamps=job.word_timestamps,
            initial_prompt=job.initial_prompt,
            beam_size=settings.beam_size,
            guards=guards,
            gate=gate,
            progress=progress,
            short_window=self.short_window(settings),
        )
        return self.engine.transcribe(audio, request)
