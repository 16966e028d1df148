"""``whisperd submit``: the reference producer, run as a real command against a real daemon."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pika.exceptions
import pytest
from conftest import REPO, wait_for

from devkit.clips import JFK, SPANISH

CMD = [sys.executable, "-m", "whisperd", "submit"]


def run_submit(cfg_path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CMD, "--config", str(cfg_path), *args], capture_output=True, text=True, cwd=REPO, timeout=timeout
    )


def run_in_terminal(cfg_path, *args: str, timeout: float = 120) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal, as a person would; returns (code, screen bytes)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 40 rows, 160 columns
    proc = subprocess.Popen(
        [*CMD, "--config", str(cfg_path), *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=REPO,
    )  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout), b"".join(chunks).decode(errors="replace")


def test_wait_prints_transcripts_and_saves_results(broker, daemon, tmp_path):
    out = tmp_path / "out"
    es = tmp_path / "entrevista.wav"
    es.write_bytes(SPANISH.path.read_bytes())
    r = run_submit(daemon.config_path, str(JFK.path), str(es), "--wait", "--format", "txt,srt", "--output", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith(f"{JFK.path} [en, 11.0 s audio") and line.endswith(JFK.reference) for line in lines)
    assert any(line.startswith(f"{es} [es,") and line.endswith(SPANISH.reference) for line in lines)
    assert sorted(p.name for p in out.iterdir()) == ["entrevista.srt", "entrevista.txt", "jfk.srt", "jfk.txt"]
    assert (out / "jfk.txt").read_text().strip() == JFK.reference
    assert "-->" in (out / "entrevista.srt").read_text()
    # Not a terminal: no bars, and one "En proceso" line per file on stderr with its task id.
    assert "|" not in r.stderr and r.stderr.count("En proceso") == 2
    staged = list((daemon.media / "submitted").iterdir())
    assert len(staged) == 2


def test_language_is_passed_and_a_failure_exits_1(broker, daemon, tmp_path):
    garbage = tmp_path / "not-audio.wav"
    garbage.write_text("this is not audio")
    r = run_submit(daemon.config_path, str(SPANISH.path), str(garbage), "--wait", "--language", "es")
    assert r.returncode == 1, r.stderr
    assert f"{garbage}: FAILED invalid_audio:" in r.stdout
    assert SPANISH.reference in r.stdout and "[es," in r.stdout


def test_progress_bars_on_a_terminal(broker, daemon_factory, tmp_path):
    d = daemon_factory(events={"progress": True}).start()
    code, screen = run_in_terminal(d.config_path, str(JFK.path), str(SPANISH.path), "--wait")
    assert code == 0, screen
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", screen)  # drop cursor movements
    assert re.search(r"jfk\.flac\s+En proceso \(queued\)\s+\|\s{20}\| 00:0\d", plain), plain
    assert re.search(r"jfk\.flac\s+En curso: 11\.0 s audio\s+\|", plain), "the processing event reached the bar"
    assert re.search(r"jfk\.flac\s+done in \d+\.\d s\s+\|█{20}\| 00:\d\d", plain), plain
    assert re.search(r"picovoice_test_es\.wav\s+done in \d+\.\d s\s+\|█{20}\|", plain), plain
    assert JFK.reference in plain and SPANISH.reference in plain
    assert "\tEn proceso" not in plain, "with bars, no task-id lines"


def test_timeout_when_nothing_answers(broker, daemon_factory):
    d = daemon_factory()  # configured, never started
    r = run_submit(d.config_path, str(JFK.path), "--wait", "--timeout", "2")
    assert r.returncode == 2
    assert "no answer within 2 s" in r.stderr
    waiting = broker.ch.queue_declare(broker.job_queue, passive=True).method.message_count
    assert waiting == 1, "the job stays queued for when a worker comes"


def test_output_without_wait_is_refused(tmp_path, daemon_factory):
    d = daemon_factory()
    r = run_submit(d.config_path, str(JFK.path), "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "--output needs --wait" in r.stderr


def test_output_copies_only_whisperd_result_files(tmp_path):
    """A completion on the reply queue may be forged: --output never copies a path it names."""
    from pathlib import Path

    from whisperd.contract import Completion
    from whisperd.submit import Progress, Results, Submitted

    results_dir, out = tmp_path / "results", tmp_path / "out"
    results_dir.mkdir()
    (results_dir / "t1.txt").write_text("the transcript\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for you\n")
    item = Submitted("t1", Path("talk.wav"), "submitted/t1.wav")
    forged = {"txt": str(secret), "json": str(results_dir / "t1.json"), "../x": str(results_dir / "t1.../x")}
    bars = Progress([item], enabled=False)
    Results(str(results_dir), out).copy(item, Completion("t1", "done", results=forged), bars)
    assert not out.exists() or list(out.iterdir()) == []
    Results(str(results_dir), out).copy(
        item, Completion("t1", "done", results={"txt": str(results_dir / "t1.txt")}), bars
    )
    assert [p.name for p in out.iterdir()] == ["talk.txt"] and (out / "talk.txt").read_text() == "the transcript\n"


def test_a_bar_follows_the_workers_progress(tmp_path):
    from whisperd.contract import Completion
    from whisperd.submit import PROGRESS_STEPS, Progress, Submitted

    audio = tmp_path / "long.wav"
    bars = Progress([Submitted("t1", audio, "long.wav")], enabled=True)
    bars.started("t1", Completion("t1", "processing", duration_s=600.0, progress=0.0))
    assert bars.bars["t1"].n == 0
    bars.started("t1", Completion("t1", "processing", duration_s=600.0, progress=0.4))
    assert bars.bars["t1"].n == 0.4 * PROGRESS_STEPS and "40%" in bars.bars["t1"].desc
    bars.started("t1", Completion("t1", "processing", duration_s=600.0, progress=0.2))  # reordered: never back
    assert bars.bars["t1"].n == 0.4 * PROGRESS_STEPS
    bars.finished("t1", Completion("t1", "done", processing_s=30.0))
    assert bars.bars["t1"].n == PROGRESS_STEPS


HUGE = "1" + "0" * 400  # an integer float() refuses
HOSTILE_NUMBERS = ["NaN", "Infinity", "-Infinity", "-0.5", "1.5", '"half"', "null", "true", HUGE, "1e400", "[]"]


def hostile_events(task_id: str) -> list[bytes]:
    """``processing`` events with each hostile value in each number a bar reads, then other shapes."""
    events = [
        f'{{"task_id": "{task_id}", "status": "processing", "{field}": {value}}}'.encode()
        for field in ("progress", "audio_done_s", "duration_s")
        for value in HOSTILE_NUMBERS
    ]
    events.append(
        f'{{"task_id": "{task_id}", "status": "processing", "progress": NaN, "audio_done_s": -1, '
        f'"duration_s": {HUGE}, "text": "\\u001b]0;owned\\u0007"}}'.encode()
    )
    events += [b"NaN", b"[]", b'{"status": "processing"}', b"\xff\xfe", b'{"task_id": 1, "status": "processing"}']
    return events


def queued_job(broker) -> tuple | None:
    """The job on the job queue, once submit has declared the queue and published to it."""
    try:
        return broker.get(broker.job_queue, 1)
    except pika.exceptions.ChannelClosedByBroker:  # 404: not declared yet
        broker.ch = broker.conn.channel()
        return None
    except pika.exceptions.ConnectionClosedByBroker as e:
        # 541 noproc: the queue is declared but its process has not started yet; the broker
        # closes the whole connection for that, so open a new one and look again.
        if e.reply_code != 541:
            raise
        broker.connect()
        return None


@pytest.mark.parametrize("bars", ["--progress", "--no-progress"])
def test_wait_survives_hostile_events_and_completions_on_its_reply_queue(broker, daemon_factory, bars):
    """Whoever can publish to the reply queue writes what ``--wait`` reads: NaN, infinities,
    numbers out of range, strings, nulls and huge integers for progress, audio_done_s and
    duration_s, then a done completion with hostile numbers and an escape sequence in its text."""
    d = daemon_factory()  # configured, never started: the test answers the job itself
    proc = subprocess.Popen(
        [*CMD, "--config", str(d.config_path), str(JFK.path), "--wait", "--timeout", "120", bars],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        props, job = wait_for(lambda: queued_job(broker), 60, "the job submit queued")
        task_id = job["task_id"]
        for body in hostile_events(task_id):
            broker.publish(body, queue=props.reply_to, correlation_id=task_id)
        done = (
            f'{{"task_id": "{task_id}", "status": "done", "text": "hola\\u001b[2J", "language": "es", '
            f'"duration_s": NaN, "processing_s": {HUGE}, "progress": Infinity}}'
        )
        broker.publish(done.encode(), queue=props.reply_to, correlation_id=task_id)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"{JFK.path} [es, 0.0 s audio, 0.00 s]: hola?[2J" in out.splitlines()
    assert "\x1b" not in out
    assert err.count("ignoring a message on the reply queue") >= 5
