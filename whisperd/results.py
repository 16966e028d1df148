"""Result files: whisper's own writers, written atomically and durably, plus a completion marker.

Each ``<task_id>.<format>`` is written to a temporary file in results_dir, fsynced and renamed
over its final name, so a reader never sees half a file. After all formats are in place the
completion itself is stored under ``.whisperd/`` the same way: that marker is the commit point
that makes a redelivered job complete again from disk instead of transcribing twice.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import IO, Any

import psutil

from whisperd.contract import Completion, ErrorCode, Job, JobError

MARKER_DIR = ".whisperd"


@dataclass(frozen=True)
class AudioIdentity:
    """What a job's audio was: its size and SHA-256, stored with the result it produced."""

    size: int
    sha256: str


HOST = socket.gethostname()


@contextmanager
def atomic_write(path: str, durable: bool = True, sync_dir: bool = True) -> Iterator[IO[str]]:
    """Write ``path`` via a temp file in the same directory and a rename: readers never see half.

    ``durable`` fsyncs the file before the rename and ``sync_dir`` the directory after it, so the
    new file survives a power cut; a caller writing several files may sync the directory once.
    """
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{HOST}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable and sync_dir:
        fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ResultStore:
    def __init__(self, results_dir: str) -> None:
        self.results_dir = results_dir
        self.marker_dir = os.path.join(results_dir, MARKER_DIR)
        os.makedirs(self.marker_dir, exist_ok=True)

    def sweep_stale_temp_files(self) -> int:
        """Remove temp files this host's dead processes left behind (a worker killed mid-write).

        Temp names carry host and pid, so several hosts may share one results_dir: only files
        of this host whose writer is gone are touched. Returns how many were removed.
        """
        stale = re.compile(rf"^\..+\.{re.escape(HOST)}\.(\d+)\.tmp$")
        removed = 0
        for directory in (self.results_dir, self.marker_dir):
            for name in os.listdir(directory):
                m = stale.match(name)
                if m and not psutil.pid_exists(int(m.group(1))):
                    try:
                        os.unlink(os.path.join(directory, name))
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed

    def path(self, task_id: str, fmt: str) -> str:
        return os.path.join(self.results_dir, f"{task_id}.{fmt}")

    def _marker(self, task_id: str) -> str:
        return os.path.join(self.marker_dir, f"{task_id}.completion.json")

    def write(self, task_id: str, result: dict[str, Any], formats: tuple[str, ...]) -> dict[str, str]:
        """Write each format with whisper's writer (a diarized result: with its speakers, built on
        whisper's); return format -> path."""
        from whisperd import whisper_modules

        if result.get("speakers") is not None:
            from whisperd import speaker_writers

            get_writer = speaker_writers.get_speaker_writer
        else:
            get_writer = whisper_modules.load("utils").get_writer
        paths = {}
        for fmt in formats:
            path = self.path(task_id, fmt)
            writer = get_writer(fmt, self.results_dir)
            with atomic_write(path, sync_dir=False) as f:
                writer.write_result(result, file=f)
            paths[fmt] = path
        fsync_dir(self.results_dir)  # once for all formats, before the marker can say "done"
        return paths

    def commit(self, job: Job, completion: Completion, audio: AudioIdentity | None = None) -> None:
        """Record that ``job`` is done; after this a redelivery is answered from disk."""
        record = {
            "job": asdict(job),
            "audio_size": audio.size if audio else None,
            "audio_sha256": audio.sha256 if audio else None,
            "completion": asdict(completion),
        }
        with atomic_write(self._marker(job.task_id)) as f:
            json.dump(record, f, ensure_ascii=False)

    def _attempts(self, task_id: str) -> str:
        return os.path.join(self.marker_dir, f"{task_id}.attempts")

    def begin_attempt(self, task_id: str) -> int:
        """Count a started transcription of ``task_id`` on disk; returns this attempt's number.

        Only work that really started counts: a job the broker hands back unstarted (a worker
        draining, a consumer cancelled) does not use up an attempt, unlike x-delivery-count.
        """
        try:
            with open(self._attempts(task_id), encoding="utf-8") as f:
                before = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            before = 0
        # Not fsynced: a power cut may forget one attempt, which only allows one more try.
        with atomic_write(self._attempts(task_id), durable=False) as f:
            f.write(str(before + 1))
        return before + 1

    def end_attempts(self, task_id: str) -> None:
        try:
            os.unlink(self._attempts(task_id))
        except FileNotFoundError:
            pass

    def lookup(self, job: Job, audio: Callable[[], AudioIdentity | None]) -> Completion | None:
        """The stored completion of this job, if it finished before and its files are intact.

        A task id whose results stand for another job (other audio path, audio content or options)
        raises ``task_id_conflict``: one producer must not overwrite another's results by reusing
        an id. ``audio`` is asked only then; None (the upload is gone) does not count against.
        The content is told by its SHA-256 (a marker from before the hash: by its size).
        """
        try:
            with open(self._marker(job.task_id), encoding="utf-8") as f:
                stored = json.load(f)
            completion = Completion.from_dict(stored["completion"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        if not all(os.path.exists(p) for p in completion.results.values()):
            return None  # results removed: the task id is free again
        if not _same_job(stored.get("job"), job):
            raise self._conflict(job, "with other options or another audio_path")
        now = audio()
        stored_size, stored_hash = stored.get("audio_size"), stored.get("audio_sha256")
        if now is not None and stored_size is not None and now.size != stored_size:
            raise self._conflict(
                job, f"with another audio file ({now.size} bytes, the stored result is of {stored_size})"
            )
        if now is not None and stored_hash is not None and now.sha256 != stored_hash:
            raise self._conflict(job, "with another audio file of the same size (its SHA-256 differs)")
        return completion

    @staticmethod
    def _conflict(job: Job, how: str) -> JobError:
        return JobError(
            ErrorCode.TASK_ID_CONFLICT,
            f"task_id {job.task_id!r} was already done for another job and is being reused {how}; its results "
            "are kept: give every job its own task_id",
            job.task_id,
        )


def _same_job(stored: Any, job: Job) -> bool:
    """Whether a marker's job is ``job``. A field the marker lacks (written before the field existed:
    diarize, speakers...) counts as its default, so a job redelivered after an upgrade is still the
    job it was, not a task_id_conflict."""
    if not isinstance(stored, dict):
        return False
    now = json.loads(json.dumps(asdict(job)))
    defaults = json.loads(json.dumps(asdict(Job(job.task_id, job.audio_path))))
    return set(stored) <= set(now) and all(stored.get(k, defaults[k]) == v for k, v in now.items())
