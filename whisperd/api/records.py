"""A task record: what the API knows of one task, as it is kept on disk and as users see it.

The JSON document on disk is the same one earlier versions wrote (the records survive upgrades
and restarts); ``TaskRecord`` is its typed form, so the code that reads records names its fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from whisperd.contract import Completion
from whisperd.wire import FINAL, LABELS


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class StateChange:
    state: str
    at: str


@dataclass(frozen=True)
class Progress:
    """How far the worker is (its processing events), until the result is in."""

    fraction: float
    audio_done_s: float | None
    duration_s: float | None


@dataclass
class TaskRecord:
    """One task this API submitted (``audio_path`` is set) and every state it has been in."""

    task_id: str
    state: str
    filename: str | None
    audio_path: str | None  # set by TaskStore.create only: a record without it is no task of this API
    submitted_at: str | None
    updated_at: str | None
    history: list[StateChange] = field(default_factory=list)
    completion: Completion | None = None  # the final completion, once there is one
    progress: Progress | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def to_json(self) -> dict[str, Any]:
        """The document on disk; ``progress`` only while there is one, as before."""
        doc = {
            "task_id": self.task_id,
            "state": self.state,
            "filename": self.filename,
            "audio_path": self.audio_path,
            "submitted_at": self.submitted_at,
            "updated_at": self.updated_at,
            "history": [dataclasses.asdict(h) for h in self.history],
            "completion": dataclasses.asdict(self.completion) if self.completion is not None else None,
        }
        if self.progress is not None:
            doc["progress"] = dataclasses.asdict(self.progress)
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> TaskRecord:
        """The record from its document; ValueError for one that is not a task record."""
        try:
            completion, progress = doc.get("completion"), doc.get("progress")
            return cls(
                task_id=doc["task_id"],
                state=doc["state"],
                filename=doc.get("filename"),
                audio_path=doc.get("audio_path"),
                submitted_at=doc.get("submitted_at"),
                updated_at=doc.get("updated_at"),
                history=[StateChange(h["state"], h["at"]) for h in doc.get("history", [])],
                completion=Completion.from_dict(completion) if completion else None,
                progress=Progress(**progress) if progress is not None else None,
            )
        except (AttributeError, KeyError, TypeError) as e:
            raise ValueError(f"not a task record: {type(e).__name__}: {e}") from None

    def __getitem__(self, key: str) -> Any:
        """A field as the JSON document has it (``record["completion"]["text"]``): records were
        plain dicts once, and tests written then still read them so."""
        return self.to_json()[key]


def view(record: TaskRecord, base_url: str) -> dict[str, Any]:
    """A task record as the API shows it."""
    c = record.completion or Completion(record.task_id, record.state)  # none yet: every field empty
    task_id = record.task_id
    return {
        "task_id": task_id,
        "status": LABELS.get(record.state, record.state),  # what users see; ``state`` carries the English name
        "state": record.state,
        "filename": record.filename,
        "submitted_at": record.submitted_at,
        "updated_at": record.updated_at,
        "text": c.text,
        "language": c.language,
        "duration_s": c.duration_s,
        "processing_s": c.processing_s,
        "error": c.error,
        "results": {fmt: f"{base_url}transcriptions/{task_id}/result.{fmt}" for fmt in c.results or {}},
        "progress": dataclasses.asdict(record.progress) if record.progress is not None else None,
        "history": [dataclasses.asdict(h) for h in record.history],
    }
