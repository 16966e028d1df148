"""Find a job's audio inside media_root and decode it, never reading anything else.

The path check happens twice: on the resolved path before opening, and on the path the
kernel reports for the opened descriptor (``/proc/self/fd``), so a symlink swapped in between
cannot lead outside. The worker's decoder helper (whisperd.decoder) then reads only that
descriptor, with no protocol at all, and may only pick real audio/video demuxers, so a
playlist or concat file cannot make it open other files.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass

import numpy as np

from whisperd import decoder
from whisperd.config import Config, job_deadline_s
from whisperd.contract import ErrorCode, JobError
from whisperd.wire import SAMPLE_RATE

DEMUXERS = decoder.DEMUXERS  # the only demuxers the decoder may pick
DAMAGE_WARNINGS = decoder.DAMAGE_WARNINGS
CHUNK = 1 << 20


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


def decode_timeout_s(cfg: Config) -> float:
    """The wall-clock limit of one decode in a worker: ``limits.decode_timeout_s`` unless it
    is 0, else 10 s + 1 s per minute of ``limits.max_duration_s``; at most 80 %
    of the job's time limit before its length is known, so a stuck decoder is stopped (the job
    fails with invalid_audio) before the supervisor would kill the worker and its model."""
    limits = cfg.limits
    wanted = limits.decode_timeout_s or decoder.timeout_for(limits.max_duration_s)
    return min(wanted, 0.8 * job_deadline_s(cfg, 0.0))


def decode(media: MediaFile, max_duration_s: float, task_id: str | None = None, threads: int = 1) -> np.ndarray:
    """Decode to 16 kHz mono float32, as whisper.load_audio does, stopping past the length limit.

    The worker's decoder helper (whisperd.decoder) does the work, so no process starts per job.
    Timestamps are not trusted (a file whose packets all claim time 0 would decode for hours):
    decoding stops as soon as the output passes ``max_duration_s`` worth of samples, and a decode
    that outlasts its deadline is killed. Memory stays within 6 bytes per allowed sample (the s16
    buffer and the float32 result).

    A file libav can only partly decode (corrupt frames, a truncated upload) is refused rather
    than transcribed in part: a silently shortened transcript is worse than a clear error. A file
    that crashes or hangs the decoder fails alone; the next job gets a fresh helper.
    """
    max_samples = int(max_duration_s * SAMPLE_RATE)
    try:
        pcm = decoder.shared().decode(media.fd, max_samples, threads)
    except decoder.DecodeFailure as e:
        if e.kind == "too_long":
            message, code = f"audio is longer than the limit of {max_duration_s:.0f} s", ErrorCode.AUDIO_TOO_LONG
        elif e.kind == "damaged":
            message, code = f"the audio file is damaged or truncated: {e.detail}", ErrorCode.INVALID_AUDIO
        else:
            message, code = f"cannot decode audio: {e.detail}", ErrorCode.INVALID_AUDIO
        raise JobError(code, message, task_id) from None
    samples = np.frombuffer(pcm, np.int16)
    if samples.size == 0:
        raise JobError(ErrorCode.INVALID_AUDIO, "the file contains no audio", task_id)
    audio = samples.astype(np.float32)
    del samples, pcm
    audio /= 32768.0
    return audio
