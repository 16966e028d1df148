"""The upload directory: where a task's audio lives until its result is in, and no longer."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from datetime import datetime

from whisperd.api.records import TaskRecord
from whisperd.api.store import TaskStore
from whisperd.api.tuning import Tuning
from whisperd.config import Config

log = logging.getLogger("whisperd.api")

UPLOAD_RE = re.compile(r"(?P<task_id>[0-9a-f]{32})(\.[A-Za-z0-9]{1,8})?")
PARTIAL_RE = re.compile(r"\.(?P<task_id>[0-9a-f]{32})\.upload")


class Uploads:
    """The upload directory: where a task's audio lives until its result is in, and no longer."""

    def __init__(self, cfg: Config, store: TaskStore, tuning: Tuning) -> None:
        self.subdir = cfg.api.upload_subdir
        self.dir = os.path.join(cfg.storage.media_root, cfg.api.upload_subdir)
        self.retention_s = cfg.api.upload_retention_s
        self.orphan_age_s = max(tuning.orphan_age_s, 2 * cfg.api.upload_idle_timeout_s)
        self.store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uploads", daemon=True)

    def start(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def partial_path(self, task_id: str) -> str:
        return os.path.join(self.dir, f".{task_id}.upload")

    def path_of(self, record: TaskRecord) -> str | None:
        """The upload of a task the API submitted itself; None for anything else."""
        audio_path = record.audio_path
        if not isinstance(audio_path, str) or os.path.dirname(audio_path) != self.subdir:
            return None
        name = os.path.basename(audio_path)
        return os.path.join(self.dir, name) if UPLOAD_RE.fullmatch(name) else None

    def finished(self, record: TaskRecord) -> None:
        """Called once a task's result is recorded: remove its audio now unless it is kept a while."""
        if self.retention_s == 0 and (path := self.path_of(record)):
            self._remove(path, f"task {record.task_id} is {record.state}")

    def _remove(self, path: str, why: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("cannot remove upload %s (%s): %s", path, why, e)
            return
        log.debug("removed upload %s: %s", path, why)

    def sweep(self) -> None:
        """Remove finished tasks' uploads past retention, and uploads nobody owns past orphan_age_s."""
        now = time.time()
        try:
            entries = list(os.scandir(self.dir))
        except OSError as e:
            log.warning("cannot list uploads in %s: %s", self.dir, e)
            return
        for entry in entries:
            try:
                self._sweep_one(entry, now)
            except (OSError, ValueError) as e:  # one odd entry never stops the sweep
                log.warning("upload %s: %s", entry.path, e)

    def _sweep_one(self, entry: os.DirEntry, now: float) -> None:
        if (m := PARTIAL_RE.fullmatch(entry.name)) is not None:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if age > self.orphan_age_s:  # an upload in progress writes at least every upload_idle_timeout_s
                self._remove(entry.path, f"an upload abandoned {age:.0f} s ago")
            return
        if (m := UPLOAD_RE.fullmatch(entry.name)) is None:
            return  # not one of ours: leave it alone
        record = self.store.get(m["task_id"])
        if record is None:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if age > self.orphan_age_s:
                self._remove(entry.path, f"no task records it, {age:.0f} s old")
        elif record.final:
            done_at = datetime.fromisoformat(record.updated_at or "").timestamp()
            if now - done_at >= self.retention_s:
                self._remove(entry.path, f"task {m['task_id']} is {record.state}")

    def _run(self) -> None:
        interval = min(60.0, max(1.0, self.retention_s / 4)) if self.retention_s else 60.0
        while True:
            self.sweep()
            if self._stop.wait(interval):
                return
