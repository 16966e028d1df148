"""One job from body bytes to a completion: parse, find the audio, decode, transcribe, store.

It knows nothing about AMQP: the worker hands it a body and publishes what comes back. Every
problem with the input becomes a ``failed`` completion with a specific code, so a bad file can
never crash the worker or loop in the queue.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from whisperd import media
from whisperd.config import Config, TranscribeConfig, check_job_option
from whisperd.contract import DONE, Completion, ErrorCode, Job, JobError, parse_job, peek_task_id
from whisperd.diarizer import SpeakerCount
from whisperd.results import AudioIdentity, ResultStore
from whisperd.speakers import Turn, attribute
from whisperd.transcript import Transcript


class Transcribing(Protocol):
    """What the pipeline needs of a transcriber (``whisperd.transcriber.Transcriber`` in a worker,
    a fake in the unit tier): refuse a job early, transcribe it, and the job thread count."""

    threads: int  # read for the decoder; set when the supervisor moves threads

    def check(self, job: Job) -> None: ...

    def transcribe(
        self,
        audio: np.ndarray,
        job: Job,
        settings: TranscribeConfig | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> Transcript: ...


class Diarizing(Protocol):
    """What the pipeline needs of a diarizer (``whisperd.diarizer.Diarizer`` in a worker): who speaks
    when in the decoded audio, on its timeline, within the job's speaker count."""

    loaded: bool

    def turns(self, audio: np.ndarray, count: SpeakerCount | None = None) -> list[Turn]: ...

    def set_threads(self, threads: int) -> None: ...


# The share of a diarized job's progress that is the transcription; the diarizer reports none of its own.
TRANSCRIBED_SHARE = 0.9


@dataclass
class Outcome:
    """What the worker must do: publish ``completion`` (if any), then ack or dead-letter the job.

    ``reason`` says why a job is dead-lettered; it travels with the dead letter.
    """

    completion: Completion | None
    ack: bool = True
    reused: bool = False
    reason: str | None = None


class Pipeline:
    def __init__(
        self,
        cfg: Config,
        transcriber: Transcribing,
        store: ResultStore,
        worker_name: str,
        log: logging.LoggerAdapter,
        diarizer: Diarizing | None = None,
    ) -> None:
        self.cfg = cfg
        self.log = log
        self.transcriber = transcriber
        self.diarizer = diarizer
        self.store = store
        self.worker_name = worker_name

    @property
    def threads(self) -> int:
        """The job's thread count, for the decoder as for the model: kept once, in the transcriber."""
        return self.transcriber.threads

    def set_threads(self, threads: int) -> None:
        self.transcriber.threads = threads
        if self.diarizer is not None:
            self.diarizer.set_threads(threads)

    @property
    def diarizer_loaded(self) -> bool:
        return self.diarizer is not None and self.diarizer.loaded

    def diarizes(self, job: Job) -> bool:
        """The job's ``diarize``, or ``diarize.default`` when it does not say."""
        return job.diarize if job.diarize is not None else self.cfg.diarize.default

    def run(
        self,
        body: bytes,
        on_started: Callable[[Job, float], None] | None = None,
        on_progress: Callable[[Job, float, float], None] | None = None,
    ) -> Outcome:
        """``on_started(job, duration_s)`` once the audio is decoded; ``on_progress(job, duration_s,
        fraction)`` as the engine gets through it (the caller throttles)."""
        started = time.monotonic()
        try:
            job = parse_job(
                body,
                tuple(self.cfg.transcribe.formats),
                self.cfg.limits.max_job_bytes,
                check_job_option,
                max_speakers=self.cfg.diarize.max_speakers,
            )
        except JobError as e:
            return self._failed(e, started)
        try:
            stored = self.store.lookup(job, lambda: self._audio_identity(job))
            if stored is not None:
                self.log.info("task %s: already done, answering from the stored result", job.task_id)
                self.store.end_attempts(job.task_id)  # a copy killed mid-way may have left a count
                return Outcome(stored, reused=True)
            attempt = self.store.begin_attempt(job.task_id)
            if attempt > self.cfg.broker.max_attempts:
                raise JobError(
                    ErrorCode.ATTEMPTS_EXHAUSTED,
                    f"the job ended its worker {attempt - 1} times (crash, kill or time limit); giving up and "
                    "moving it to the dead-letter queue",
                    job.task_id,
                )
            outcome = Outcome(self._transcribe(job, started, on_started, on_progress))
        except JobError as e:
            outcome = self._failed(e, started)
            if e.code == ErrorCode.ATTEMPTS_EXHAUSTED:
                outcome.ack, outcome.reason = False, f"{e.code}: {e.message}"
        if outcome.completion is not None and outcome.completion.task_id:
            self.store.end_attempts(outcome.completion.task_id)
        return outcome

    def refuse(self, body: bytes, code: str, message: str) -> Outcome:
        """A job refused before it is parsed (its AMQP properties could not be decoded): a failed
        completion when its task_id can be read, and always a dead letter with the reason."""
        task_id = peek_task_id(body, self.cfg.limits.max_job_bytes)
        outcome = self._failed(JobError(code, message, task_id), time.monotonic())
        outcome.ack, outcome.reason = False, f"{code}: {message}"
        return outcome

    def _open(self, job: Job) -> media.MediaFile:
        max_bytes = int(self.cfg.limits.max_file_mb * 2**20)
        return media.open_media(self.cfg.storage.media_root, job.audio_path, max_bytes, job.task_id)

    def _audio_identity(self, job: Job) -> AudioIdentity | None:
        """The size and hash of the job's audio now, or None when it is gone (removed after its result)."""
        try:
            with self._open(job) as f:
                return AudioIdentity(f.size, media.digest(f))
        except JobError as e:
            if e.code == ErrorCode.FILE_NOT_FOUND:
                return None
            raise

    def _transcribe(
        self,
        job: Job,
        started: float,
        on_started: Callable[[Job, float], None] | None,
        on_progress: Callable[[Job, float, float], None] | None,
    ) -> Completion:
        self.transcriber.check(job)
        with self._open(job) as f:
            identity = AudioIdentity(f.size, media.digest(f))  # hashed once, before the decoder reads it
            audio = media.decode(f, self.cfg.limits.max_duration_s, job.task_id, self.threads)
        duration = len(audio) / media.SAMPLE_RATE
        if on_started:
            on_started(job, duration)
        diarize = self.diarizes(job)
        try:
            progress = functools.partial(on_progress, job, duration) if on_progress else None
            if diarize and progress is not None:
                progress = functools.partial(_scaled, progress, TRANSCRIBED_SHARE)
            # Speakers are given word by word: a diarized job's words are timed whether it asked or not.
            asked = dataclasses.replace(job, word_timestamps=True) if diarize else job
            transcript = self.transcriber.transcribe(audio, asked, self.cfg.transcribe, progress)
        except (MemoryError, JobError):
            raise
        except Exception as e:  # a model error on this input: report it, keep serving
            self.log.exception("task %s: transcription failed", job.task_id)
            raise JobError(ErrorCode.TRANSCRIPTION_FAILED, f"transcription failed: {e}", job.task_id) from e
        if diarize:
            transcript = self._diarize(audio, job, transcript)
        stored = self.store.lookup(job, lambda: identity)
        if stored is not None:
            # Another worker finished this job while this one ran it (the broker requeued it, e.g.
            # while this host was cut off): the result stored first stands, so every answer is the same.
            self.log.info("task %s: transcribed again, but another worker stored it first; keeping that result",
                          job.task_id)  # fmt: skip
            return stored
        paths = self.store.write(job.task_id, transcript.to_whisper_dict(), job.formats)
        completion = Completion(
            task_id=job.task_id,
            status=DONE,
            text=transcript.text.strip(),
            language=transcript.language,
            duration_s=round(duration, 3),
            processing_s=round(time.monotonic() - started, 3),
            results=paths,
            worker=self.worker_name,
            speech_s=transcript.speech_s,  # the speech gate's figure: for the completion, not the files
            speakers=None if transcript.speakers is None else len(transcript.speakers),
        )
        self.store.commit(job, completion, identity)
        self.log.info(
            "task %s: done, %.1f s of %s audio in %.2f s",
            job.task_id, duration, completion.language, completion.processing_s,
        )  # fmt: skip
        return completion

    def _diarize(self, audio: np.ndarray, job: Job, transcript: Transcript) -> Transcript:
        """``transcript`` with each word and segment given its speaker (diarization_failed if it cannot be)."""
        if not transcript.segments:  # no speech (the gate found none): nobody to name, no senko to run
            return dataclasses.replace(transcript, speakers=())
        if self.diarizer is None:
            raise JobError(ErrorCode.DIARIZATION_FAILED, "this worker has no diarizer", job.task_id)
        started = time.monotonic()
        try:
            turns = self.diarizer.turns(audio, SpeakerCount(job.speakers, job.min_speakers, job.max_speakers))
        except MemoryError:
            raise
        except Exception as e:  # senko failing on this input: this job only
            self.log.exception("task %s: diarization failed", job.task_id)
            raise JobError(ErrorCode.DIARIZATION_FAILED, f"diarization failed: {e}", job.task_id) from e
        diarized = attribute(transcript, turns)
        self.log.info("task %s: %d speakers in %.2f s", job.task_id, len(diarized.speakers or ()),
                      time.monotonic() - started)  # fmt: skip
        return diarized

    def _failed(self, err: JobError, started: float) -> Outcome:
        task = f"task {err.task_id}" if err.task_id else "job without a valid task_id"
        self.log.error("%s: failed: %s: %s", task, err.code, err.message)
        if err.task_id is None:
            return Outcome(None, ack=False, reason=f"{err.code}: {err.message}")
        return Outcome(Completion.failure(err, self.worker_name, round(time.monotonic() - started, 3)))


def _scaled(progress: Callable[[float], None], share: float, fraction: float) -> None:
    progress(fraction * share)
