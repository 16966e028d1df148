"""Find a job's audio inside media_root and decode it with ffmpeg, never reading anything else.

The path check happens twice: on the resolved path before opening, and on the path the
kernel reports for the opened descriptor (``/proc/self/fd``), so a symlink swapped in between
cannot lead outside. ffmpeg then reads that descriptor, runs without a shell, may only use the
``file`` protocol and may only pick real audio/video demuxers, so a playlist or concat file
cannot make it open other files.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import subprocess
import threading
from dataclasses import dataclass
from typing import IO

import numpy as np

from whisperd.contract import ErrorCode, JobError

SAMPLE_RATE = 16000
DEMUXERS = "aac,ac3,aiff,amr,ape,asf,au,avi,caf,dts,eac3,flac,flv,matroska,mov,mp3,mpeg,mpegts,ogg,tta,w64,wav,wv"


@dataclass
class MediaFile:
    """An opened audio file inside media_root; closes its descriptor when done."""

    fd: int
    size: int

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> MediaFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _symlink_loop(path: str) -> bool:
    try:
        os.path.realpath(path, strict=True)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def open_media(media_root: str, audio_path: str, max_bytes: int, task_id: str | None = None) -> MediaFile:
    """Open ``audio_path`` (relative to media_root, or absolute inside it) for reading."""

    def fail(code: str, message: str) -> JobError:
        return JobError(code, message, task_id)

    root = os.path.realpath(media_root)
    candidate = audio_path if os.path.isabs(audio_path) else os.path.join(root, audio_path)
    real = os.path.realpath(candidate)
    if not _inside(root, real):
        raise fail(ErrorCode.PATH_OUTSIDE_MEDIA_ROOT, f"audio_path {audio_path!r} points outside the media directory")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise fail(ErrorCode.FILE_NOT_FOUND, f"audio file {audio_path!r} does not exist") from None
    except PermissionError:
        raise fail(ErrorCode.FILE_UNREADABLE, f"audio file {audio_path!r} is not readable by whisperd") from None
    except OSError as e:
        if e.errno == errno.ELOOP and _symlink_loop(real):
            raise fail(ErrorCode.FILE_UNREADABLE, f"audio_path {audio_path!r} is a symbolic link loop") from None
        if e.errno == errno.ELOOP:
            raise fail(ErrorCode.PATH_OUTSIDE_MEDIA_ROOT, f"audio_path {audio_path!r} changed while opening") from None
        raise fail(ErrorCode.FILE_UNREADABLE, f"cannot open audio file {audio_path!r}: {e.strerror}") from None
    media = MediaFile(fd, 0)
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
        if not _inside(root, opened):
            raise fail(
                ErrorCode.PATH_OUTSIDE_MEDIA_ROOT, f"audio_path {audio_path!r} points outside the media directory"
            )
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise fail(ErrorCode.NOT_A_FILE, f"audio_path {audio_path!r} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise fail(ErrorCode.NOT_A_FILE, f"audio_path {audio_path!r} is not a regular file")
        if st.st_nlink > 1:
            # A hard link made inside media_root can name any file of the same filesystem.
            raise fail(
                ErrorCode.PATH_OUTSIDE_MEDIA_ROOT,
                f"audio file {audio_path!r} has {st.st_nlink} hard links; whisperd reads only files with one link",
            )
        if st.st_size == 0:
            raise fail(ErrorCode.EMPTY_FILE, f"audio file {audio_path!r} is empty (0 bytes)")
        if st.st_size > max_bytes:
            raise fail(
                ErrorCode.FILE_TOO_LARGE,
                f"audio file {audio_path!r} is {st.st_size / 2**20:.1f} MiB; "
                f"the limit is {round(max_bytes / 2**20, 2):g} MiB",
            )
        media.size = st.st_size
        return media
    except BaseException:
        media.close()
        raise


def digest(media: MediaFile) -> str:
    """SHA-256 of the opened file: what tells one upload from another of the same name and size."""
    h, offset = hashlib.sha256(), 0
    while chunk := os.pread(media.fd, CHUNK, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


# ffmpeg warnings that mean the file is damaged rather than merely unusual: a cut-off upload
# (WAV/MP3 shorter than their headers say) only shows up as one of these.
DAMAGE_WARNINGS = re.compile(r"corrupt|truncat|do not match|partial file|premature|invalid", re.IGNORECASE)
LOG_LINE = re.compile(r"^(?:\[[^]]* @ 0x[0-9a-f]+\] )?\[(\w+)\] (.*)$")


def log_messages(stderr: str, fd: int) -> list[tuple[str | None, str]]:
    """(level, text) of each line of ffmpeg's ``level+`` log, the /dev/fd/N prefix removed."""
    out = []
    for line in stderr.strip().splitlines():
        m = LOG_LINE.match(line.strip())
        level, text = m.groups() if m else (None, line.strip())
        out.append((level, text.replace(f"/dev/fd/{fd}: ", "").strip()))
    return out


def damage(messages: list[tuple[str | None, str]]) -> str | None:
    """The first sign of a damaged file among ffmpeg's log messages, or None."""
    for level, text in messages:
        if level in ("error", "fatal", "panic") or (level == "warning" and DAMAGE_WARNINGS.search(text)):
            return text
    return None


STDERR_KEEP = 64 * 1024  # ffmpeg may log a line per damaged frame: keep the start, drop the rest
CHUNK = 1 << 20


def _drain(stream: IO[bytes], keep: bytearray) -> None:
    """Read a pipe to its end, keeping only the first STDERR_KEEP bytes."""
    while chunk := stream.read(CHUNK):
        if len(keep) < STDERR_KEEP:
            keep += chunk[: STDERR_KEEP - len(keep)]


def decode(media: MediaFile, max_duration_s: float, task_id: str | None = None, threads: int = 1) -> np.ndarray:
    """Decode to 16 kHz mono float32, as whisper.load_audio does, stopping past the length limit.

    ffmpeg's ``-t`` trusts timestamps, so a file whose packets all claim time 0 would decode for
    hours; the output is therefore read in chunks and ffmpeg is killed as soon as it passes
    ``max_duration_s`` worth of samples. Memory stays within 6 bytes per allowed sample (the s16
    buffer and the float32 result).

    A file ffmpeg can only partly decode (corrupt frames, a truncated upload) is refused rather
    than transcribed in part: a silently shortened transcript is worse than a clear error.
    """
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+warning", "-threads", str(threads),
        "-protocol_whitelist", "file", "-format_whitelist", DEMUXERS,
        "-t", f"{max_duration_s + 1:.3f}",
        "-i", f"/dev/fd/{media.fd}",
        "-vn", "-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le", "-ar", str(SAMPLE_RATE), "-",
    ]  # fmt: skip
    limit = int(max_duration_s * SAMPLE_RATE) * 2
    pcm, log_bytes = bytearray(), bytearray()
    too_long = False
    with subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(media.fd,)
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        logger = threading.Thread(target=_drain, args=(proc.stderr, log_bytes), daemon=True)
        logger.start()
        eof = False
        try:
            while chunk := proc.stdout.read1(CHUNK):
                pcm += chunk
                if len(pcm) > limit:
                    too_long = True
                    break
            else:
                eof = True
        finally:
            if not eof:  # over the limit, or an error here: ffmpeg may be blocked writing to us
                proc.kill()
            proc.wait()
            logger.join()
    if too_long:
        raise JobError(ErrorCode.AUDIO_TOO_LONG, f"audio is longer than the limit of {max_duration_s:.0f} s", task_id)
    messages = log_messages(log_bytes.decode(errors="replace"), media.fd)
    problem = damage(messages)
    if proc.returncode != 0:
        detail = problem or (messages[-1][1] if messages else f"ffmpeg exit code {proc.returncode}")
        raise JobError(ErrorCode.INVALID_AUDIO, f"cannot decode audio: {detail}", task_id)
    if problem:
        raise JobError(ErrorCode.INVALID_AUDIO, f"the audio file is damaged or truncated: {problem}", task_id)
    samples = np.frombuffer(pcm, np.int16)
    if samples.size == 0:
        raise JobError(ErrorCode.INVALID_AUDIO, "the file contains no audio", task_id)
    audio = samples.astype(np.float32)
    del samples, pcm
    audio /= 32768.0
    return audio
