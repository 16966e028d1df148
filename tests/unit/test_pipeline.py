"""whisperd.pipeline.Pipeline end to end with a fake transcriber: real media checks, the real
decoder helper on real files from tests/data, the real ResultStore and whisper's own writers."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devkit.clips import CLIPS, JFK
from whisperd import config, decoder
from whisperd.contract import DONE, FAILED, ErrorCode, job_body
from whisperd.diarizer import SpeakerCount
from whisperd.logs import Labelled
from whisperd.pipeline import Outcome, Pipeline
from whisperd.results import MARKER_DIR, ResultStore
from whisperd.speakers import Turn

from .fakes import FakeTranscriber

WORKER = "host:worker-1:1"


@pytest.fixture(scope="module", autouse=True)
def decoder_helper() -> Iterator[None]:
    """The decoder helper starts at the first decode, as in a worker; stopped when the module is done."""
    yield
    decoder.shared().close()


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """A media_root holding jfk.flac (11.0 s)."""
    root = tmp_path / "media"
    root.mkdir()
    shutil.copyfile(JFK.path, root / "jfk.flac")
    return root


def make_pipeline(tmp_path: Path, transcriber: FakeTranscriber, diarizer: Any = None,
                  **sections: dict[str, Any]) -> Pipeline:  # fmt: skip
    raw: dict[str, dict[str, Any]] = {
        "storage": {"media_root": str(tmp_path / "media"), "results_dir": str(tmp_path / "results")}
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    cfg = config.parse(raw)
    log = Labelled(logging.getLogger("whisperd.worker"), "worker 1")
    return Pipeline(cfg, transcriber, ResultStore(cfg.storage.results_dir), WORKER, log, diarizer)


def failure(outcome: Outcome) -> tuple[str | None, str | None]:
    """(status, error code) of an outcome's completion."""
    assert outcome.completion is not None
    return outcome.completion.status, (outcome.completion.error or {}).get("code")


def test_a_job_is_decoded_transcribed_and_its_result_files_written(tmp_path: Path, media: Path) -> None:
    """The whole happy path: the transcriber gets the decoded audio (16 kHz mono float32), the
    result files are whisper's formats, and the completion says what the producer needs."""
    transcriber = FakeTranscriber(JFK.reference, speech_s=10.4)
    pipeline = make_pipeline(tmp_path, transcriber)
    started: list[float] = []
    progress: list[float] = []
    outcome = pipeline.run(
        job_body("done-1", "jfk.flac", formats=["txt", "json", "srt"]),
        on_started=lambda job, duration: started.append(duration),
        on_progress=lambda job, duration, fraction: progress.append(fraction),
    )
    c = outcome.completion
    assert c is not None and (outcome.ack, outcome.reused, outcome.reason) == (True, False, None)
    assert (c.task_id, c.status, c.text, c.language, c.worker) == ("done-1", DONE, JFK.reference, "en", WORKER)
    assert c.duration_s == pytest.approx(11.0, abs=0.05) and c.speech_s == 10.4
    assert c.processing_s is not None and c.processing_s >= 0 and c.error is None
    assert started == [c.duration_s] and progress == [0.5, 1.0]

    (audio, job), = transcriber.calls  # fmt: skip
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) == pytest.approx(11.0 * 16000, abs=800)
    assert 0.01 < float(np.abs(audio).max()) <= 1.0  # speech, scaled as whisper.load_audio scales it
    assert job.task_id == "done-1" and job.formats == ("txt", "json", "srt")

    results = tmp_path / "results"
    assert c.results == {fmt: str(results / f"done-1.{fmt}") for fmt in ("txt", "json", "srt")}
    assert (results / "done-1.txt").read_text(encoding="utf-8").strip() == JFK.reference
    assert json.loads((results / "done-1.json").read_text(encoding="utf-8"))["text"].strip() == JFK.reference
    assert "-->" in (results / "done-1.srt").read_text(encoding="utf-8")
    assert "speech_s" not in json.loads((results / "done-1.json").read_text(encoding="utf-8"))
    marker = json.loads((results / MARKER_DIR / "done-1.completion.json").read_text(encoding="utf-8"))
    assert marker["completion"] == asdict(c) and marker["audio_size"] == os.path.getsize(media / "jfk.flac")
    assert not (results / MARKER_DIR / "done-1.attempts").exists()  # a finished job leaves no attempt count
    assert not [p for p in os.listdir(results) if p.endswith(".tmp")]


def test_a_missing_file_fails_with_file_not_found(tmp_path: Path, media: Path) -> None:
    """A failed completion the producer can act on, acked: the job must not loop in the queue."""
    transcriber = FakeTranscriber()
    outcome = make_pipeline(tmp_path, transcriber).run(job_body("nf-1", "nowhere.flac"))
    assert failure(outcome) == (FAILED, ErrorCode.FILE_NOT_FOUND) and outcome.ack
    assert outcome.completion is not None and outcome.completion.task_id == "nf-1"
    assert transcriber.calls == []


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_a_path_outside_media_root_is_refused(tmp_path: Path, media: Path, how: str) -> None:
    """A job names a file, so it must not name one whisperd may not read: not by ``..``, an
    absolute path, nor a symlink inside media_root that leads out."""
    secret = tmp_path / "secret.flac"
    shutil.copyfile(JFK.path, secret)
    if how == "symlink":
        (media / "link.flac").symlink_to(secret)
    audio_path = {"dotdot": "../secret.flac", "absolute": str(secret), "symlink": "link.flac"}[how]
    transcriber = FakeTranscriber()
    outcome = make_pipeline(tmp_path, transcriber).run(job_body("out-1", audio_path))
    assert failure(outcome) == (FAILED, ErrorCode.PATH_OUTSIDE_MEDIA_ROOT) and outcome.ack
    assert transcriber.calls == []


@pytest.mark.parametrize(
    "body", [b"{not json", b"[1, 2]", json.dumps({"audio_path": "jfk.flac"}).encode()], ids=["syntax", "list", "no-id"]
)
def test_a_body_without_a_task_id_is_dead_lettered_without_a_completion(
    tmp_path: Path, media: Path, body: bytes
) -> None:
    """No task_id, nobody to address a completion to: the outcome says dead-letter, with why."""
    outcome = make_pipeline(tmp_path, FakeTranscriber()).run(body)
    assert outcome.completion is None and not outcome.ack
    assert outcome.reason is not None and outcome.reason.startswith(("invalid_job: ", "invalid_task_id: "))


def test_a_bad_option_with_a_task_id_fails_with_a_completion(tmp_path: Path, media: Path) -> None:
    """Once the task_id is readable the producer gets a failed completion with the specific code."""
    body = json.dumps({"task_id": "opt-1", "audio_path": "jfk.flac", "formats": ["docx"]}).encode()
    outcome = make_pipeline(tmp_path, FakeTranscriber()).run(body)
    assert failure(outcome) == (FAILED, ErrorCode.UNSUPPORTED_FORMAT) and outcome.ack


def test_a_transcriber_error_fails_the_job_and_the_worker_keeps_serving(tmp_path: Path, media: Path) -> None:
    """A model that raises on one input fails that job (transcription_failed), writes no result
    and leaves no attempt count; the next job runs normally."""
    transcriber = FakeTranscriber(error=RuntimeError("CUDA error: an illegal memory access"))
    pipeline = make_pipeline(tmp_path, transcriber)
    outcome = pipeline.run(job_body("tf-1", "jfk.flac"))
    assert failure(outcome) == (FAILED, ErrorCode.TRANSCRIPTION_FAILED) and outcome.ack
    assert outcome.completion is not None and "illegal memory access" in outcome.completion.error["message"]
    results = tmp_path / "results"
    assert sorted(os.listdir(results)) == [MARKER_DIR] and os.listdir(results / MARKER_DIR) == []

    transcriber.error = None
    assert failure(pipeline.run(job_body("tf-2", "jfk.flac"))) == (DONE, None)


def test_a_redelivered_job_is_answered_from_disk_without_transcribing_again(tmp_path: Path, media: Path) -> None:
    """The broker redelivers a job whose ack was lost: the stored completion answers it, identical,
    and the transcriber is not called a second time."""
    transcriber = FakeTranscriber(JFK.reference)
    pipeline = make_pipeline(tmp_path, transcriber)
    body = job_body("re-1", "jfk.flac")
    first = pipeline.run(body)
    again = pipeline.run(body)
    assert again.reused and not first.reused and again.ack
    assert again.completion == first.completion
    assert len(transcriber.calls) == 1


def test_a_redelivered_job_whose_results_were_removed_is_transcribed_again(tmp_path: Path, media: Path) -> None:
    """Removing a task's results frees its task_id: the stored marker alone does not answer."""
    transcriber = FakeTranscriber()
    pipeline = make_pipeline(tmp_path, transcriber)
    first = pipeline.run(job_body("rm-1", "jfk.flac"))
    assert first.completion is not None
    for path in first.completion.results.values():
        os.unlink(path)
    again = pipeline.run(job_body("rm-1", "jfk.flac"))
    assert not again.reused and len(transcriber.calls) == 2


@pytest.mark.parametrize("how", ["other-path", "other-content", "other-options"])
def test_a_task_id_reused_for_another_job_is_a_conflict(tmp_path: Path, media: Path, how: str) -> None:
    """One producer must not overwrite another's results by reusing a task_id: the new job fails
    with task_id_conflict and the stored results stay as they were."""
    transcriber = FakeTranscriber(JFK.reference)
    pipeline = make_pipeline(tmp_path, transcriber)
    assert failure(pipeline.run(job_body("dup-1", "jfk.flac"))) == (DONE, None)
    if how == "other-path":
        shutil.copyfile(CLIPS[1].path, media / "other.wav")
        body = job_body("dup-1", "other.wav")
    elif how == "other-content":
        shutil.copyfile(CLIPS[5].path, media / "jfk.flac")  # a new upload under the same name
        body = job_body("dup-1", "jfk.flac")
    else:
        body = job_body("dup-1", "jfk.flac", language="es")
    outcome = pipeline.run(body)
    assert failure(outcome) == (FAILED, ErrorCode.TASK_ID_CONFLICT) and outcome.ack
    assert len(transcriber.calls) == 1
    assert (tmp_path / "results" / "dup-1.txt").read_text(encoding="utf-8").strip() == JFK.reference


def test_a_job_that_keeps_killing_its_worker_is_dead_lettered_after_max_attempts(tmp_path: Path, media: Path) -> None:
    """Attempts are counted on disk before transcribing; past broker.max_attempts the job fails
    with attempts_exhausted and is dead-lettered instead of killing another worker."""
    transcriber = FakeTranscriber()
    pipeline = make_pipeline(tmp_path, transcriber, broker={"max_attempts": 2})
    for _ in range(2):  # two workers died (OOM, kill -9) mid-way through this job
        pipeline.store.begin_attempt("oom-1")
    outcome = pipeline.run(job_body("oom-1", "jfk.flac"))
    assert failure(outcome) == (FAILED, ErrorCode.ATTEMPTS_EXHAUSTED)
    assert not outcome.ack and outcome.reason is not None and outcome.reason.startswith("attempts_exhausted: ")
    assert transcriber.calls == []


def test_the_real_and_the_fake_transcriber_both_are_what_the_pipeline_types_against(tmp_path: Path) -> None:
    """Pipeline takes a ``Transcribing``: the worker's Transcriber and this tier's fake have its
    methods with its parameters, and a ``threads`` the pipeline reads and sets."""
    import inspect

    from whisperd.pipeline import Transcribing
    from whisperd.transcriber import Transcriber

    def parameters(fn: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    for name in ("check", "transcribe"):
        expected = parameters(getattr(Transcribing, name))
        assert parameters(getattr(Transcriber, name)) == expected == parameters(getattr(FakeTranscriber, name)), name
    assert isinstance(Transcriber.threads, property) and Transcriber.threads.fset is not None
    transcriber = FakeTranscriber()
    pipeline = make_pipeline(tmp_path, transcriber)
    pipeline.set_threads(3)
    assert transcriber.threads == pipeline.threads == 3


class FakeDiarizer:
    """Stands in for whisperd.diarizer.Diarizer (``pipeline.Diarizing``): two speakers, the second from
    5 s on; ``error`` is raised by ``turns``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.loaded = False
        self.threads = 1
        self.counts: list[SpeakerCount | None] = []

    def turns(self, audio: np.ndarray, count: SpeakerCount | None = None) -> list[Turn]:
        self.loaded = True
        self.counts.append(count)
        if self.error is not None:
            raise self.error
        return [Turn(0.0, 5.0, "spk-b"), Turn(5.0, len(audio) / 16000, "spk-a")]

    def set_threads(self, threads: int) -> None:
        self.threads = threads


def test_a_diarized_job_times_its_words_and_names_its_speakers(tmp_path: Path, media: Path) -> None:
    transcriber, diarizer = FakeTranscriber(JFK.reference), FakeDiarizer()
    pipeline = make_pipeline(tmp_path, transcriber, diarizer)
    progress: list[float] = []
    body = job_body("d-1", "jfk.flac", formats=["json", "txt"], diarize=True, min_speakers=1, max_speakers=3)
    outcome = pipeline.run(body, on_progress=lambda job, duration, fraction: progress.append(fraction))
    c = outcome.completion
    assert c is not None and c.status == DONE and c.speakers == 1, c
    assert transcriber.calls[0][1].word_timestamps, "a diarized job's words are timed"
    assert diarizer.counts == [SpeakerCount(None, 1, 3)]
    assert progress == [0.45, 0.9], "the transcription is 90 % of a diarized job"
    result = json.loads(Path(c.results["json"]).read_text())
    assert result["speakers"] == [{"speaker": "SPEAKER_00", "talk_s": 6.0}], "the one segment overlaps spk-a most"
    assert Path(c.results["txt"]).read_text() == f"SPEAKER_00: {JFK.reference}\n"
    assert pipeline.diarizer_loaded


@pytest.mark.parametrize(("default", "asked", "diarized"), [(True, None, True), (True, False, False),
                                                            (False, None, False), (False, True, True)])  # fmt: skip
def test_diarize_default_decides_only_for_jobs_that_do_not_say(tmp_path: Path, media: Path, default: bool,
                                                               asked: bool | None, diarized: bool) -> None:  # fmt: skip
    transcriber = FakeTranscriber(JFK.reference)
    pipeline = make_pipeline(tmp_path, transcriber, FakeDiarizer(), diarize={"default": default})
    c = pipeline.run(job_body("d-2", "jfk.flac", diarize=asked)).completion
    assert c is not None and c.status == DONE
    assert (c.speakers is not None, transcriber.calls[0][1].word_timestamps) == (diarized, diarized)


def test_a_diarizer_that_fails_fails_the_job_with_its_own_code(tmp_path: Path, media: Path) -> None:
    pipeline = make_pipeline(tmp_path, FakeTranscriber(), FakeDiarizer(RuntimeError("clustering exploded")))
    outcome = pipeline.run(job_body("d-3", "jfk.flac", diarize=True))
    assert failure(outcome) == (FAILED, ErrorCode.DIARIZATION_FAILED)
    assert outcome.completion is not None and "clustering exploded" in outcome.completion.error["message"]
    assert not (tmp_path / "results" / "d-3.json").exists(), "nothing written"


class SilentTranscriber(FakeTranscriber):
    """Finds no speech: what the gate gives for silence, noise or music."""

    def transcribe(self, audio: np.ndarray, job: Any, settings: Any = None, progress: Any = None) -> Any:
        return dataclasses.replace(super().transcribe(audio, job, settings, progress), text="", segments=())


def test_a_diarized_job_without_speech_names_nobody_and_runs_no_diarizer(tmp_path: Path, media: Path) -> None:
    diarizer = FakeDiarizer()
    c = make_pipeline(tmp_path, SilentTranscriber(), diarizer).run(job_body("d-4", "jfk.flac", diarize=True)).completion
    assert c is not None and (c.status, c.speakers, c.text) == (DONE, 0, "")
    assert diarizer.counts == [] and not diarizer.loaded
