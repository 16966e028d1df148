"""The model: loaded once per worker process, after the fork, and warmed up before consuming.

Only worker processes import this module; it is the one place that imports torch and whisper.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from whisperd import models
from whisperd.config import ModelConfig, TranscribeConfig
from whisperd.contract import GUARD_OPTIONS, ErrorCode, Job, JobError

log = logging.getLogger("whisperd.worker")


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps OpenMP/MKL pools; must be set before torch is imported."""
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


class Transcriber:
    def __init__(self, cfg: ModelConfig, threads: int, device: str | None = None) -> None:
        os.environ.update(thread_env(threads))
        import torch
        import whisper
        from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

        self._torch = torch
        self.threads = threads
        torch.set_num_threads(threads)
        self._whisper = whisper
        self._languages = LANGUAGES
        self._language_names = TO_LANGUAGE_CODE
        self.device = device or resolve_device(cfg.device, torch.cuda.is_available())
        self.model = models.load(cfg, self.device)
        self.fp16 = cfg.fp16 and self.device.startswith("cuda")
        self.name = cfg.name

    def warm_up(self) -> None:
        """Run the encoder and a few decoder steps once, so the first job pays no start-up cost."""
        whisper = self._whisper
        mel = whisper.log_mel_spectrogram(np.zeros(whisper.audio.N_SAMPLES, np.float32), self.model.dims.n_mels)
        mel = mel.to(self.model.device)
        language = None if self.model.is_multilingual else "en"  # English-only models have no language id
        options = whisper.DecodingOptions(fp16=self.fp16, sample_len=4, without_timestamps=True, language=language)
        whisper.decode(self.model, mel, options)

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
        if not self.model.is_multilingual and code != "en":
            raise JobError(ErrorCode.UNSUPPORTED_LANGUAGE, f"model {self.name!r} is English-only", job.task_id)
        return code

    def check(self, job: Job) -> None:
        """Reject what this model cannot do before spending time on decoding audio."""
        self.language_code(job)
        if job.task == "translate" and not self.model.is_multilingual:
            raise JobError(
                ErrorCode.UNSUPPORTED_TASK, f"model {self.name!r} is English-only: no translate", job.task_id
            )

    def transcribe(self, audio: np.ndarray, job: Job, settings: TranscribeConfig | None = None) -> dict[str, Any]:
        """Whisper's result for ``audio``. With ``settings.vad`` only the speech goes to Whisper
        (none: no call at all), timestamps stay those of ``audio``, and ``result["speech_s"]``
        says how much speech there was; without it this is a plain ``model.transcribe``."""
        settings = settings or TranscribeConfig()
        self._torch.set_num_threads(self.threads)  # per calling thread with OpenMP, so set it here
        language = self.language_code(job)
        if not settings.vad:
            return self._whisper_transcribe(audio, job, settings, language)
        from whisperd import speech

        found = speech.find_speech(
            audio, settings.vad_threshold, settings.vad_min_silence_ms, settings.vad_speech_pad_ms
        )
        if not found.chunks:
            return {"text": "", "segments": [], "language": language, "speech_s": 0.0}
        result = self._whisper_transcribe(found.audio, job, settings, language)
        found.restore(result)
        result["speech_s"] = round(found.seconds, 3)
        return result

    def _whisper_transcribe(
        self, audio: np.ndarray, job: Job, settings: TranscribeConfig, language: str | None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {name: getattr(settings, name) for name in GUARD_OPTIONS}
        kwargs.update({name: getattr(job, name) for name in GUARD_OPTIONS if getattr(job, name) is not None})
        kwargs["hallucination_silence_threshold"] = kwargs["hallucination_silence_threshold"] or None  # 0 = off
        if settings.beam_size:
            kwargs.update(beam_size=settings.beam_size, best_of=settings.beam_size)
        return self.model.transcribe(
            audio,
            language=language,
            task=job.task,
            word_timestamps=job.word_timestamps,
            initial_prompt=job.initial_prompt,
            fp16=self.fp16,
            verbose=None,
            **kwargs,
        )


def resolve_device(setting: str, cuda_available: bool) -> str:
    if setting == "auto":
        return "cuda" if cuda_available else "cpu"
    return setting
