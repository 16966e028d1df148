"""The task store: one JSON record per task in ``api.state_dir``, the API's only state.

Each record is written atomically and fsynced *before* its completion is acked, so nothing is
lost when the API restarts. A file per task needs no database server and is plenty for a
reference service; a site with heavy traffic would keep the same records in its own database.
"""

from __future__ import annotations

import json
import os
import threading
from enum import StrEnum

from whisperd.api.records import Progress, StateChange, TaskRecord, now_iso
from whisperd.contract import Completion
from whisperd.results import atomic_write
from whisperd.wire import PROCESSING, QUEUED

HISTORY = 20  # state changes kept per task


class Applied(StrEnum):
    """What TaskStore.apply did with an event."""

    RECORDED = "recorded"
    UNCHANGED = "unchanged"  # a "processing" or the same final state again: a redelivery
    LATE = "late"  # another final state for a finished task
    FOREIGN = "foreign"  # no task of this API


class TaskStore:
    """One JSON record per task in state_dir; safe across restarts."""

    def __init__(self, state_dir: str) -> None:
        self.dir = state_dir
        os.makedirs(state_dir, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, task_id: str) -> str:
        return os.path.join(self.dir, f"{task_id}.json")

    def get(self, task_id: str) -> TaskRecord | None:
        """The task's record; None if there is none; ValueError if what is there is not one."""
        try:
            with open(self._path(task_id), encoding="utf-8") as f:
                return TaskRecord.from_json(json.load(f))
        except FileNotFoundError:
            return None

    def _put(self, record: TaskRecord) -> None:
        with atomic_write(self._path(record.task_id)) as f:
            json.dump(record.to_json(), f, ensure_ascii=False)

    def create(self, task_id: str, filename: str | None, audio_path: str) -> TaskRecord:
        at = now_iso()
        record = TaskRecord(task_id, QUEUED, filename, audio_path, submitted_at=at, updated_at=at,
                            history=[StateChange(QUEUED, at)])  # fmt: skip
        with self._lock:
            self._put(record)
        return record

    def delete(self, task_id: str) -> None:
        try:
            os.unlink(self._path(task_id))
        except FileNotFoundError:
            pass

    def apply(self, c: Completion) -> tuple[Applied, TaskRecord | None]:
        """Record a completion or a processing event of a task this API submitted.

        Returns what happened and the record: RECORDED; UNCHANGED (a "processing" or the same
        final state again: a redelivery); LATE (another final state for a finished task, e.g. the
        task_id_conflict failure of a direct job reusing its id: a finished task stays as it is);
        FOREIGN (no task of this API: another producer's, or forged; nothing is written).
        """
        assert c.task_id is not None
        with self._lock:
            record = self.get(c.task_id)
            if record is None or not record.audio_path:
                return Applied.FOREIGN, None
            if record.final:
                return (Applied.UNCHANGED if c.status in (PROCESSING, record.state) else Applied.LATE), record
            _advance(record, c)
            self._put(record)
            return Applied.RECORDED, record


def _advance(record: TaskRecord, c: Completion) -> None:
    """Move an unfinished record to the event's state, with its result or its progress."""
    at = now_iso()
    record.state, record.updated_at = c.status, at
    record.history = [*record.history, StateChange(c.status, at)][-HISTORY:]
    if record.final:
        record.completion = c
        record.progress = None
    elif c.progress is not None:  # events.progress: how far the worker is
        record.progress = Progress(c.progress, c.audio_done_s, c.duration_s)
