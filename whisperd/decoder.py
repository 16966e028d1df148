"""Decode uploads in a long-lived helper process with PyAV, so a job costs no process start.

Exec'ing ffmpeg per job cost ~55 ms plus its start; the helper (``python -m whisperd.decoder``)
is started once per worker and again only after it crashed or hung. It decodes with the libav
that PyAV bundles, in its own process so that a decoder bug on a hostile file (a crash, a hang,
a runaway allocation) can never take the worker's loaded model with it.

What it may read: only the descriptor the worker opened and checked (``media.open_media``),
passed over a unix socketpair (SCM_RIGHTS) and read with ``pread`` through PyAV's custom I/O, so
no protocol opens anything. Nested opens (playlists, concat scripts, references) are refused
three times over: only the demuxers in ``DEMUXERS`` may be picked, the protocol allow-list
names no protocol, and PyAV's ``io_open`` hook refuses every URL.

What comes back: 16 kHz mono s16 PCM, as ``ffmpeg -ac 1 -ar 16000 -f s16le`` (what
whisper.load_audio reads) gives it, streamed in chunks, then one coded result. The worker
enforces the length limit and a wall-clock deadline itself and SIGKILLs the helper past either.

Wire protocol (SOCK_SEQPACKET, one request at a time)::

    worker -> helper   b"R" + JSON {"max_samples", "threads"}, the file descriptor attached
    helper -> worker   b"A"                    request taken (a death before this is not the file's fault)
                       b"P" + PCM bytes         zero or more, at most CHUNK bytes each
                       b"E" + JSON {"status", "detail"}   status: ok, too_long, damaged, invalid

This module is the helper; the worker's side (starting it, sending it files, restarting it after
a crash or a hang) is ``whisperd.decoder_client``, re-exported here. The helper side imports only
the standard library, av, ``whisperd.wire`` and ``whisperd.decoder_client`` (no numpy, no torch).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import re
import resource
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

from whisperd.decoder_client import CHUNK
from whisperd.decoder_client import DecodeFailure as DecodeFailure  # the worker's side, re-exported
from whisperd.decoder_client import Decoder as Decoder
from whisperd.decoder_client import shared as shared
from whisperd.decoder_client import timeout_for as timeout_for
from whisperd.wire import SAMPLE_RATE

DEMUXERS = "aac,ac3,aiff,amr,ape,asf,au,avi,caf,dts,eac3,flac,flv,matroska,mov,mp3,mpeg,mpegts,ogg,tta,w64,wav,wv"
# libav warnings that mean the file is damaged rather than merely unusual: a cut-off upload
# (WAV/MP3 shorter than their headers say) only shows up as one of these.
DAMAGE_WARNINGS = re.compile(r"corrupt|truncat|do not match|partial file|premature|invalid", re.IGNORECASE)
HELPER_ADDRESS_SPACE = 2 * 2**30  # the helper's RLIMIT_AS: ~120 MB is used; a runaway allocation fails instead

# libav log levels (libavutil/log.h)
AV_LOG_ERROR = 16
AV_LOG_WARNING = 24


class FdReader(io.RawIOBase):
    """The opened upload, read with pread at our own offset: nothing is ever opened by name."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd, self.pos, self.size = fd, 0, os.fstat(fd).st_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """At most ``size`` bytes: PyAV copies what we return into a buffer of that size."""
        data = os.pread(self.fd, max(0, min(size, CHUNK)) if size >= 0 else CHUNK, self.pos)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the file")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos


def _refuse_open(url: str, flags: int, options: dict) -> Any:
    raise PermissionError(f"whisperd reads only the uploaded file, not {url!r}")


class _Log:
    """libav's messages of one decode, kept bounded: the first sign of damage and the last line."""

    def __init__(self, captured: list) -> None:
        self.captured = captured
        self.problem: str | None = None
        self.last: str | None = None

    def scan(self) -> None:
        for level, _name, text in self.captured:
            text = text.strip()
            self.last = text or self.last
            if self.problem is None and (
                level <= AV_LOG_ERROR or (level <= AV_LOG_WARNING and DAMAGE_WARNINGS.search(text))
            ):
                self.problem = text
        self.captured.clear()

    def damage(self, text: str) -> None:
        self.scan()
        if self.problem is None:
            self.problem = text


def _error_text(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


class _Output:
    """Sends PCM in CHUNK-sized messages and stops at ``max_samples``."""

    def __init__(self, send: Callable[[list], Any], max_samples: int) -> None:
        self.send, self.max_samples = send, max_samples
        self.samples = 0
        self.buf = bytearray()

    def add(self, frame: Any) -> bool:
        """False once the output would pass the limit (nothing more is sent)."""
        n = frame.samples
        if self.samples + n > self.max_samples:
            return False
        self.samples += n
        self.buf += memoryview(frame.planes[0])[: n * 2]  # planes are padded: only the samples
        if len(self.buf) >= CHUNK:
            self.flush()
        return True

    def flush(self) -> None:
        view = memoryview(self.buf)
        for i in range(0, len(view), CHUNK):
            self.send([b"P", view[i : i + CHUNK]])
        view.release()
        self.buf.clear()


def _pick_stream(container: Any) -> Any:
    """The audio stream ffmpeg would pick: most channels, a default disposition first, then the first."""
    import av

    audio = [s for s in container.streams if s.type == "audio"]
    if not audio:
        return None
    default = av.stream.Disposition.default
    return max(audio, key=lambda s: s.codec_context.channels + 5_000_000 * bool(s.disposition & default))


def _resampler(frame: Any) -> Any:
    """To s16 mono 16 kHz. FFmpeg 5.1's swresample (the system ffmpeg that whisper.load_audio
    runs) resamples 16-bit input in s16p; the bundled libav would use fltp and differ by a few
    LSB, so that choice is spelled out."""
    import av

    options = {"internal_sample_fmt": "s16p"} if frame.format.bytes <= 2 else None
    return av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE, options=options)


def open_input(fd: int, format: str | None = None) -> Any:
    """PyAV's container on the descriptor: only DEMUXERS may be probed, the protocol allow-list
    names no protocol and io_open refuses every URL (either alone stops a playlist's segments)."""
    import av

    return av.open(
        FdReader(fd), "r", format=format, buffer_size=CHUNK, io_open=_refuse_open,
        container_options={"format_whitelist": DEMUXERS, "protocol_whitelist": "none"},
    )  # fmt: skip


def _decoded(container: Any, stream: Any, log: _Log) -> Iterator[Any]:
    """The stream's frames. As on ffmpeg's command line, a damaged packet or a demuxing error is
    noted and decoding goes on (a file that is damaged and too long is too long)."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except Exception as e:  # a read or demuxing error: flush what the decoder holds, then stop
            log.damage(f"error while demuxing: {_error_text(e)}")
            packet = None
        frames: list = []
        try:
            if packet is None:
                frames = stream.codec_context.decode(None)
            else:
                if packet.is_corrupt:
                    log.damage("corrupt packet")
                frames = packet.decode()
        except Exception as e:
            log.damage(_error_text(e))
        yield from frames
        log.scan()
        if packet is None:
            return


def _converted(frames: Iterator[Any], log: _Log) -> Iterator[Any]:
    """The frames as s16 mono 16 kHz; when the stream changes shape (a new header mid-stream), the
    resampler is flushed and built again, as ffmpeg reconfigures its filter graph."""
    resampler, shape = None, None
    for frame in frames:
        try:
            key = (frame.format.name, frame.layout.name, frame.sample_rate)
            converted = []
            if key != shape:
                converted = resampler.resample(None) if resampler is not None else []
                resampler, shape = _resampler(frame), key
            converted += resampler.resample(frame)
        except Exception as e:
            log.damage(f"cannot convert a frame: {_error_text(e)}")
            continue
        yield from converted
    try:
        tail = resampler.resample(None) if resampler is not None else []
    except Exception as e:
        log.damage(f"cannot convert a frame: {_error_text(e)}")
        tail = []
    yield from tail


def decode_file(fd: int, max_samples: int, threads: int, send: Callable[[list], Any]) -> dict:
    """Decode the file behind ``fd``, sending its PCM; the coded result (status, detail).
    Damage is reported at the end, after everything decodable was decoded, as ffmpeg did."""
    import av.logging

    level = av.logging.get_level()
    if level is None or level < av.logging.WARNING:  # PyAV drops libav's warnings unless asked
        av.logging.set_level(av.logging.WARNING)  # and the damage check needs them
    out = _Output(send, max_samples)
    with av.logging.Capture(local=False) as captured:  # libav may log from its own threads
        log = _Log(captured)
        try:
            container = open_input(fd)
        except Exception as e:
            log.scan()
            return {"status": "invalid", "detail": log.problem or _error_text(e)}
        with container:
            try:
                stream = _pick_stream(container)
                if stream is None:
                    return {"status": "invalid", "detail": "the file has no audio stream"}
                stream.codec_context.thread_count = threads
            except Exception as e:
                log.scan()
                return {"status": "invalid", "detail": log.problem or _error_text(e)}
            for frame in _converted(_decoded(container, stream, log), log):
                if not out.add(frame):
                    return {"status": "too_long", "detail": ""}
            out.flush()
            log.scan()
    if log.problem:
        return {"status": "damaged", "detail": log.problem}
    return {"status": "ok", "detail": ""}


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the worker dies, even mid-decode in a hung libav call (Linux PR_SET_PDEATHSIG).
    The kernel ties it to the thread that started the helper: in a worker that is the job thread,
    which lives as long as the worker and is the only one that starts helpers."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:
        os._exit(0)


def serve(sock: socket.socket) -> None:
    """Answer requests until the worker closes its end."""
    from setproctitle import setproctitle

    def title(state: str) -> None:
        setproctitle(f"whisperd: decoder for pid {os.getppid()} [{state}]")

    title("idle")
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 4096, 4)
        except ConnectionResetError:
            return
        if not msg:
            return
        try:
            if msg[:1] != b"R" or len(fds) != 1:
                sock.send(b"A")
                sock.send(b"E" + json.dumps({"status": "invalid", "detail": "bad request"}).encode())
                continue
            request = json.loads(msg[1:])
            sock.send(b"A")
            title("decoding")
            result = decode_file(fds[0], int(request["max_samples"]), int(request["threads"]), sock.sendmsg)
            sock.send(b"E" + json.dumps(result).encode())
            title("idle")
        finally:
            for fd in fds:
                os.close(fd)


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    _die_with_parent(int(argv[2]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's, as for the worker
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (HELPER_ADDRESS_SPACE, HELPER_ADDRESS_SPACE))
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the worker went away or gave up on this decode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
