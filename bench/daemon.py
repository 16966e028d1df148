"""The real daemon (``python -m whisperd run``) as a subprocess, with a fake systemd notify socket.

The benchmark times what an operator sees: READY=1 on the notify socket, signals, exit codes.
Each instance gets its own config, media and results directories and unique queue names.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
BROKER_URL = os.environ.get("WHISPERD_BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672/%2F")


class NotifyListener:
    """Receives sd_notify datagrams and stamps each line with its arrival time (monotonic)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.lines: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            self.lines.extend((now, line) for line in data.decode(errors="replace").splitlines())

    def times(self, line: str) -> list[float]:
        return [t for t, x in list(self.lines) if x == line]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | list):
        return json.dumps(v)
    return repr(v)


def write_toml(path: Path, data: dict[str, dict[str, Any]]) -> None:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


class Daemon:
    """One ``whisperd run`` with its own directory; ``start`` waits for READY=1."""

    def __init__(self, root: Path, job_queue: str, result_queue: str, model_path: str, **sections: dict[str, Any]):
        self.root = root
        self.media = root / "media"
        self.results = root / "results"
        self.media.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "whisperd.toml"
        self.log_path = root / "whisperd.log"
        self.notify = NotifyListener(root / "notify.sock")
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.config: dict[str, dict[str, Any]] = {
            "broker": {"url": BROKER_URL, "job_queue": job_queue, "result_queue": result_queue},
            "model": {"name": model_path, "device": "cpu"},
            "storage": {"media_root": str(self.media), "results_dir": str(self.results)},
            "workers": {"count": 1, "drain_timeout": 120.0},
        }
        self.configure(**sections)

    def configure(self, **sections: dict[str, Any]) -> None:
        for name, values in sections.items():
            self.config.setdefault(name, {}).update(values)
        write_toml(self.config_path, self.config)

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait for READY=1; returns seconds from exec to READY."""
        env = {**os.environ, "NOTIFY_SOCKET": self.notify.path, "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "whisperd", "run", "--config", str(self.config_path)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )  # fmt: skip
        return self.wait_ready(1, timeout) - self.started_at

    def wait_ready(self, count: int, timeout: float) -> float:
        """Wait for the count-th READY=1; returns its arrival time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = self.notify.times("READY=1")
            if len(ready) >= count:
                return ready[count - 1]
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"whisperd exited with {self.proc.returncode}; log:\n{self.log()[-3000:]}")
            time.sleep(0.01)
        raise RuntimeError(f"no READY=1 #{count} within {timeout:.0f} s; log:\n{self.log()[-3000:]}")

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
        return [k for k in kids if _cmdline(k).startswith("whisperd: worker")]

    def worker_titles(self) -> list[str]:
        return [_cmdline(w) for w in self.workers()]

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Fast stop (SIGQUIT), then make sure nothing of it is left."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.signal(signal.SIGQUIT)
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

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline()).strip()
    except psutil.Error:
        return ""
