"""A real ``whisperd run`` in a subprocess, under a stand-in for systemd's notify socket.

Shared by the test suite and the benchmarks: the daemon starts as systemd would start it
(``NOTIFY_SOCKET`` set, its own process group), ``start`` waits for ``READY=1``, and ``stop``
leaves no process behind. Nothing here is imported by the daemon, nor shipped with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def write_toml(path: Path, data: dict[str, dict[str, Any]]) -> None:
    """Write a config of ``{section: {key: value}}`` (all whisperd's config needs)."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def title_of(p: psutil.Process) -> str:
    """A process's title as ``ps`` shows it (setproctitle pads it with spaces)."""
    try:
        return " ".join(p.cmdline()).strip()
    except psutil.Error:
        return ""


class NotifyListener:
    """Records every ``sd_notify`` line with its arrival time and its sender's pid (SO_PASSCRED)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.entries: list[tuple[float, int, str]] = []  # (monotonic time, sender pid, line)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        creds_size = struct.calcsize("3i")
        while not self._stop:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(creds_size))
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:creds_size])[0]
            self.entries.extend((now, pid, line) for line in data.decode(errors="replace").splitlines())

    def lines(self) -> list[str]:
        return [line for _, _, line in list(self.entries)]

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def times(self, line: str) -> list[float]:
        return [t for t, _, x in list(self.entries) if x == line]

    def statuses(self) -> list[str]:
        return [x[7:] for x in self.lines() if x.startswith("STATUS=")]

    def senders(self) -> set[int]:
        return {pid for _, pid, _ in list(self.entries)}

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class DaemonProcess:
    """One ``whisperd run`` with its own config file, media and results directories and log."""

    def __init__(self, root: Path, config: dict[str, dict[str, Any]], cwd: Path | None = None) -> None:
        self.root = root
        self.media = root / "media"
        self.results = root / "results"
        self.media.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "whisperd.toml"
        self.log_path = root / "whisperd.log"
        self.cwd = cwd
        self.notify = NotifyListener(root / "notify.sock")
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        # A command that execs the daemon in another context, e.g. ["ip", "netns", "exec", NAME]
        # to run it as a host of its own network; it must exec (keep the pid), not fork.
        self.launcher: list[str] = []
        self.config: dict[str, dict[str, Any]] = {
            "storage": {"media_root": str(self.media), "results_dir": str(self.results)},
            # one control socket per daemon, so several can run side by side
            "control": {"socket": str(root / "control.sock")},
        }
        self.configure(**config)

    def configure(self, **sections: dict[str, Any]) -> None:
        """Merge settings into the config file (a running daemon sees them on SIGHUP)."""
        for name, values in sections.items():
            self.config.setdefault(name, {}).update(values)
        write_toml(self.config_path, self.config)

    def start(self, wait_ready: bool = True, env: dict[str, str] | None = None, timeout: float = 180) -> float:
        """Start the daemon; with ``wait_ready``, wait for READY=1 and return seconds from exec to it."""
        full_env = {**os.environ, "NOTIFY_SOCKET": self.notify.path, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [*self.launcher, sys.executable, "-m", "whisperd", "run", "--config", str(self.config_path)],
            env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.cwd,
        )  # fmt: skip
        return self.wait_ready(1, timeout) - self.started_at if wait_ready else 0.0

    def wait_ready(self, count: int = 1, timeout: float = 180) -> float:
        """Wait for the count-th READY=1 (one per start and per reload); returns its arrival time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = self.notify.times("READY=1")
            if len(ready) >= count:
                return ready[count - 1]
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"whisperd exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.01)
        raise AssertionError(f"no READY=1 #{count} within {timeout:.0f} s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def workers(self) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [k for k in kids if title_of(k).startswith("whisperd: worker")]

    def titles(self) -> list[str]:
        return sorted(title_of(w) for w in self.workers())

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stage(self, source: Path, name: str) -> str:
        """Copy an audio file into media_root as ``name``; returns the job's audio_path."""
        dest = self.media / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        return name

    def stop(self) -> None:
        """Fast stop (SIGQUIT), then SIGKILL whatever of its process group is left."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGQUIT)
                self.proc.wait(30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        if self.proc is not None:
            self._log.close()
        self.notify.close()

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
