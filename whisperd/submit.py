"""``whisperd submit``: the reference producer, doing what the producer API does.

Each file is copied into media_root under a fresh task id, and a job is published with
``reply_to`` pointing at a private reply queue, so ``--wait`` gets the completions (and the
``processing`` events, with ``events.progress``) without taking them from the shared result queue.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika.exceptions
from tqdm import tqdm

from whisperd import broker
from whisperd.config import Config
from whisperd.contract import Completion, JobError, job_body
from whisperd.wire import FAILED, FINAL, FORMATS, LABELS, PROCESSING, QUEUED

SUBMIT_DIR = "submitted"
PUBLISH_RETRY_S = 120.0  # how long a job is offered to the cluster's nodes before submit gives up


@dataclass
class Submitted:
    task_id: str
    source: Path
    audio_path: str


def new_task_id() -> str:
    return uuid.uuid4().hex


def stage(cfg: Config, source: Path, task_id: str) -> str:
    """Copy ``source`` into media_root; return the job's audio_path (relative to media_root)."""
    relative = os.path.join(SUBMIT_DIR, f"{task_id}{source.suffix.lower()}")
    dest = os.path.join(cfg.storage.media_root, relative)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.part"
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o640)
    os.replace(tmp, dest)
    return relative


def submit(
    cfg: Config,
    files: list[Path],
    wait: bool = False,
    language: str | None = None,
    formats: list[str] | None = None,
    output: Path | None = None,
    timeout: float = 3600.0,
    progress: bool | None = None,
    *,
    diarize: bool | None = None,
    speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
) -> int:
    """Queue ``files``; with ``wait``, show them progress and print the transcripts.

    ``progress``: True/False forces the bars on/off; None shows them when stderr is a terminal.
    ``diarize`` and the speaker counts go into every job as given (None: not sent, so the
    workers' diarize.default decides); the command line checked them (``speakers_problem``).
    """
    options = {"diarize": diarize, "speakers": speakers, "min_speakers": min_speakers, "max_speakers": max_speakers}
    # A reply queue named here, not by the broker, so that after a fail-over to another node
    # it is declared again under the name the jobs already published carry in reply_to.
    reply_to = f"whisperd.submit.{uuid.uuid4().hex}" if wait else None

    def declare_reply_queue(channel: Any) -> None:
        if reply_to is not None:
            channel.queue_declare(reply_to, exclusive=True, auto_delete=True)

    publisher = broker.ConfirmedPublisher(cfg.broker, "whisperd submit", retry_for_s=PUBLISH_RETRY_S,
                                          on_open=declare_reply_queue)  # fmt: skip
    try:
        try:
            publisher.open()
        except (pika.exceptions.AMQPError, OSError) as e:
            print(f"whisperd: cannot reach the broker: {broker.reason(e)}", file=sys.stderr)
            return 3
        submitted = []
        quiet = wait and Progress.enabled(progress)
        for source in files:
            task_id = new_task_id()
            audio_path = stage(cfg, source, task_id)
            props = broker.properties(correlation_id=task_id, reply_to=reply_to, message_id=task_id)
            body = job_body(task_id, audio_path, language, formats, **options)
            try:
                publisher.publish(cfg.broker.job_queue, body, props)
            except (pika.exceptions.AMQPError, OSError) as e:
                os.unlink(os.path.join(cfg.storage.media_root, audio_path))
                why = f"no broker node confirmed it within {PUBLISH_RETRY_S:.0f} s ({broker.reason(e)})"
                print(f"whisperd: cannot queue {source}: {why}; {len(submitted)} files were queued before it",
                      file=sys.stderr)  # fmt: skip
                return 3
            submitted.append(Submitted(task_id, source, audio_path))
            if not quiet:
                print(f"{task_id}\t{source}\t{LABELS[QUEUED]}", file=sys.stderr if wait else sys.stdout, flush=True)
        if not wait:
            return 0
        results = Results(cfg.storage.results_dir, output)
        return _wait(publisher.channel, reply_to, submitted, results, timeout, Progress(submitted, progress))
    finally:
        publisher.close()


PROGRESS_STEPS = 1000  # a bar's resolution
# C0 and C1 control characters and DEL: a forged completion must not drive the terminal.
_CONTROLS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)], "?")


def number(value: object, high: float = math.inf) -> float | None:
    """A completion's number if it is one between 0 and ``high``, else None. Anyone who can
    publish to the reply queue writes completions, and JSON gives NaN, Infinity, -1, true or an
    integer of 400 digits (which float() and round() refuse)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if 0.0 <= x <= high else None  # NaN compares false


def printable(value: object) -> str:
    """A completion's text for the terminal, without control characters (escape sequences)."""
    return str(value).translate(_CONTROLS)


class Progress:
    """One tqdm bar per file: queued, then LABELS[PROCESSING] when a worker starts it, then done or failed.

    With ``events.progress`` the worker's processing events carry the share of the audio done
    (every few seconds), and the bar follows it; otherwise it fills when its file is finished.
    """

    def __init__(self, submitted: list[Submitted], enabled: bool | None) -> None:
        self.width = max(len(s.source.name) for s in submitted)
        self.names = {s.task_id: s.source.name for s in submitted}
        self.bars = {
            s.task_id: tqdm(
                total=PROGRESS_STEPS,
                desc=self._desc(s.task_id, f"{LABELS[QUEUED]} ({QUEUED})"),
                position=i,
                bar_format="{desc} |{bar:20}| {elapsed}",
                disable=not self.enabled(enabled),
                file=sys.stderr,
            )
            for i, s in enumerate(submitted)
        }

    def _desc(self, task_id: str, state: str) -> str:
        return f"{self.names[task_id]:<{self.width}}  {state:<28}"

    @staticmethod
    def enabled(setting: bool | None) -> bool:
        return sys.stderr.isatty() if setting is None else setting

    def started(self, task_id: str, c: Completion) -> None:
        """A processing event: the job started, or got further (``progress``)."""
        bar = self.bars[task_id]
        progress, duration = number(c.progress, 1.0), number(c.duration_s)
        if progress is not None:  # events can arrive out of order: a bar never goes back
            bar.update(max(0, min(PROGRESS_STEPS - 1, round(progress * PROGRESS_STEPS)) - bar.n))
        audio = f" {duration:.1f} s audio" if duration is not None else ""
        done = f" {bar.n / PROGRESS_STEPS:.0%}" if bar.n else ""
        bar.set_description_str(self._desc(task_id, f"{LABELS[PROCESSING]}:{audio}{done}"))

    def finished(self, task_id: str, c: Completion) -> None:
        bar = self.bars[task_id]
        if c.status == FAILED:
            state = f"FAILED: {printable((c.error or {}).get('code'))}"
        else:
            state = f"done in {number(c.processing_s) or 0:.1f} s"
        bar.set_description_str(self._desc(task_id, state), refresh=False)
        bar.update(PROGRESS_STEPS - bar.n)

    def tick(self) -> None:
        """Redraw the bars still waiting, so their elapsed time moves."""
        for bar in self.bars.values():
            if bar.n < bar.total:
                bar.refresh()

    def write(self, line: str, file: object = None) -> None:
        """Print above the bars without breaking them."""
        tqdm.write(line, file=file or sys.stdout)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _wait(
    channel: object, reply_to: str, submitted: list[Submitted], results: Results, timeout: float, bars: Progress
) -> int:
    pending = {s.task_id: s for s in submitted}
    failures = 0
    deadline = time.monotonic() + timeout
    try:
        for method, props, body in channel.consume(reply_to, auto_ack=True, inactivity_timeout=1.0):  # type: ignore[attr-defined]
            if method is not None:
                try:
                    completion = Completion.from_json(body)
                except JobError as e:
                    bars.write(f"whisperd: ignoring a message on the reply queue: {e.message}", file=sys.stderr)
                    continue
                task_id = props.correlation_id or completion.task_id or ""
                if task_id in pending and completion.status == PROCESSING:
                    bars.started(task_id, completion)
                elif task_id in pending and completion.status in FINAL:
                    item = pending.pop(task_id)
                    failures += completion.status == FAILED
                    bars.finished(task_id, completion)
                    _show(item, completion, results, bars)
            if not pending or time.monotonic() > deadline:
                break
            bars.tick()
        channel.cancel()  # type: ignore[attr-defined]
    finally:
        bars.close()
    for item in pending.values():
        print(f"{item.source}: no answer within {timeout:.0f} s (task {item.task_id} is still queued)", file=sys.stderr)
    return 2 if pending else (1 if failures else 0)


class Results:
    """Where ``--output`` copies results from: only ``results_dir/<task_id>.<format>``.

    A completion names its result paths, but anyone who can publish to the reply queue can
    write one: the paths are recomputed here, never taken from the message.
    """

    def __init__(self, results_dir: str, output: Path | None) -> None:
        self.results_dir, self.output = results_dir, output

    def copy(self, item: Submitted, c: Completion, bars: Progress) -> None:
        if self.output is None:
            return
        self.output.mkdir(parents=True, exist_ok=True)
        for fmt, named in c.results.items():
            path = os.path.join(self.results_dir, f"{item.task_id}.{fmt}")
            if fmt not in FORMATS or named != path:
                bars.write(f"{item.source}: not copying {fmt!r} from {named!r}: not a whisperd result", file=sys.stderr)
                continue
            try:
                shutil.copyfile(path, self.output / f"{item.source.stem}.{fmt}")
            except OSError as e:
                bars.write(f"{item.source}: cannot copy {fmt} result from {path}: {e}", file=sys.stderr)


def _show(item: Submitted, c: Completion, results: Results, bars: Progress) -> None:
    if c.status == FAILED:
        err = c.error or {}
        bars.write(f"{item.source}: FAILED {printable(err.get('code'))}: {printable(err.get('message'))}")
        return
    times = f"{number(c.duration_s) or 0:.1f} s audio, {number(c.processing_s) or 0:.2f} s"
    bars.write(f"{item.source} [{printable(c.language)}, {times}]: {printable(c.text)}")
    results.copy(item, c, bars)
