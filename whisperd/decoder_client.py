"""The worker's side of the decoder helper (``whisperd.decoder``): starts it, sends it files, restarts it.

The helper is a subprocess, started once per worker and again only after it crashed or hung, so
a decoder bug on a hostile file never reaches the worker's loaded model. This module is that
subprocess's management and the worker's end of the wire protocol that ``whisperd.decoder``
describes; it imports only the standard library and ``whisperd.wire``, so the helper may
import its constants.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from whisperd.wire import SAMPLE_RATE

CHUNK = 64 * 1024  # bytes of PCM per message (a SEQPACKET message must fit the socket buffer)
TIMEOUT_BASE_S = 10.0
TIMEOUT_SPEED = 60.0  # a file at the length limit must decode at 60x real time at least
ACK_TIMEOUT_S = 60.0  # a fresh helper imports av (~0.1 s) before it answers; past this it is stuck
QUIT_WAIT_S = 2.0


class DecodeFailure(Exception):
    """The file could not be decoded; ``kind`` is one of too_long, damaged, invalid, crashed, timeout."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def timeout_for(max_duration_s: float) -> float:
    """The default wall-clock limit of one decode: 10 s + 1 s per minute of allowed audio (250 s
    for the default 4 h), so even a file at the length limit may take 60x less than real time,
    and a file built to decode slowly (or a stuck decoder) is stopped."""
    return TIMEOUT_BASE_S + max_duration_s / TIMEOUT_SPEED


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Decoder:
    """The worker's handle on its decoder helper: starts it, sends it files, restarts it after a
    crash or a hang. One decode at a time (the lock); ``timeout_s`` 0 derives it per call."""

    def __init__(self, timeout_s: float = 0.0) -> None:
        self.timeout_s = timeout_s
        self.starts = 0  # helpers started so far: one per worker lifetime, plus one per crash or hang
        self.received = 0  # PCM bytes of the decode in progress (tests wait on it)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._owner = 0  # the pid that started the helper (a forked child must not share it)
        self._buf = bytearray(CHUNK + 64)

    @property
    def pid(self) -> int | None:
        """The helper's pid, or None when none is running."""
        return self._proc.pid if self._proc is not None and self._owner == os.getpid() else None

    def start(self) -> None:
        """Start the helper unless it runs: the worker calls it before loading its model, so the
        helper's start (a Python interpreter importing av) overlaps the model load."""
        with self._lock:
            self._ensure()

    def close(self) -> None:
        """Stop the helper: it exits when its socket closes; SIGKILL if it does not within 2 s.
        Never waits for a decode in progress (a worker on its way out): that helper is killed."""
        if self._lock.acquire(timeout=0):
            try:
                self._stop(wait_s=QUIT_WAIT_S)
            finally:
                self._lock.release()
        elif (proc := self._proc) is not None and self._owner == os.getpid():
            proc.kill()

    def decode(self, fd: int, max_samples: int, threads: int = 1, timeout_s: float | None = None) -> bytearray:
        """The file behind ``fd`` as 16 kHz mono s16le bytes, at most ``max_samples`` samples.

        Raises DecodeFailure for anything about the file (too long, damaged, not audio, the helper
        crashed or hung on it); OSError or RuntimeError when no helper can be run at all, which is
        not the file's fault.
        """
        if timeout_s is None:
            timeout_s = self.timeout_s or timeout_for(max_samples / SAMPLE_RATE)
        request = b"R" + json.dumps({"max_samples": int(max_samples), "threads": int(threads)}).encode()
        with self._lock:
            deadline = time.monotonic() + timeout_s
            self.received = 0
            self._send(request, fd)
            try:
                return self._receive(max_samples * 2, deadline, timeout_s)
            except DecodeFailure:
                raise  # after a crash or a hang, the next decode starts a fresh helper
            except BaseException:
                self._stop()  # interrupted mid-stream (MemoryError, a signal): the helper is out of step
                raise

    def _send(self, request: bytes, fd: int) -> None:
        """Hand the request to a helper that takes it (acks); a helper found dead (killed while idle,
        never started) is replaced once, without blaming the file."""
        for attempt in (1, 2):
            self._ensure()
            assert self._sock is not None
            try:
                socket.send_fds(self._sock, [request], [fd])
                reply = self._recv(time.monotonic() + ACK_TIMEOUT_S)
            except (BrokenPipeError, ConnectionResetError):
                reply = b""
            except TimeoutError:
                self._stop()
                raise RuntimeError(f"the decoder helper did not answer within {ACK_TIMEOUT_S:.0f} s") from None
            if reply == b"A":
                return
            how = self._stop()
            if reply or attempt == 2:
                raise RuntimeError(f"the decoder helper cannot take requests ({how})")

    def _receive(self, limit: int, deadline: float, timeout_s: float) -> bytearray:
        pcm = bytearray()
        while True:
            try:
                msg = self._recv(deadline)
            except TimeoutError:
                self._stop()
                raise DecodeFailure(
                    "timeout", f"decoding took longer than {timeout_s:g} s; the decoder was stopped"
                ) from None
            except ConnectionResetError:
                msg = b""
            if not msg:
                how = self._stop()
                raise DecodeFailure("crashed", f"the decoder crashed on this file ({how}); a fresh one takes the next")
            kind, body = msg[:1], memoryview(msg)[1:]
            if kind == b"P":
                if len(pcm) + len(body) > limit:  # the helper stops itself at the limit; never trust it
                    self._stop()
                    raise DecodeFailure("too_long", "more samples than the limit")
                pcm += body
                self.received = len(pcm)
            elif kind == b"E":
                result = json.loads(bytes(body))
                if result.get("status") != "ok":
                    raise DecodeFailure(str(result.get("status")), str(result.get("detail", "")))
                return pcm
            else:
                self._stop()
                raise DecodeFailure("crashed", f"the decoder sent an unknown message {bytes(kind)!r}")

    def _recv(self, deadline: float) -> bytes:
        """One message, or TimeoutError once ``deadline`` has passed. The deadline is checked before
        every read: a helper that keeps the socket full (a fast CPU decoding a long file) never
        makes a read wait, so a socket timeout alone would let the decode run past its limit."""
        assert self._sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("past the deadline")
        self._sock.settimeout(left)
        n = self._sock.recv_into(self._buf)
        return bytes(memoryview(self._buf)[:n])

    def _ensure(self) -> None:
        if self._proc is not None and self._owner != os.getpid():
            self._proc = self._sock = None  # inherited across a fork: the parent's helper, not ours
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._proc is not None:
            self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            package_parent = str(Path(__file__).resolve().parent.parent)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "whisperd.decoder", str(theirs.fileno()), str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), env=env,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock, self._owner = ours, os.getpid()
        self.starts += 1

    def _stop(self, wait_s: float = 0.0) -> str:
        """Close the socket and reap the helper (SIGKILL unless it exits within ``wait_s``); how it ended."""
        proc, sock, self._proc, self._sock = self._proc, self._sock, None, None
        if sock is not None:
            sock.close()
        if proc is None:
            return "not running"
        if wait_s:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait_s)
        if proc.poll() is None:
            proc.kill()
        return describe_exit(proc.wait())


_shared: Decoder | None = None


def shared() -> Decoder:
    """This process's decoder (one helper per worker)."""
    global _shared
    if _shared is None:
        _shared = Decoder()
    return _shared
