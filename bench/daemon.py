"""The real daemon (``python -m whisperd run``) as a subprocess, with a fake systemd notify socket.

The benchmark times what an operator sees: READY=1 on the notify socket, signals, exit codes.
Each instance gets its own config, media and results directories and unique queue names; the
process handling itself is ``devkit.daemon``, shared with the test suite.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from devkit.daemon import DaemonProcess

REPO = Path(__file__).resolve().parent.parent
BROKER_URL = os.environ.get("WHISPERD_BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672/%2F")


class Daemon(DaemonProcess):
    """One ``whisperd run`` on the given queues and model; ``start`` returns seconds to READY=1."""

    def __init__(self, root: Path, job_queue: str, result_queue: str, model_path: str, **sections: dict[str, Any]):
        base: dict[str, dict[str, Any]] = {
            "broker": {"url": BROKER_URL, "job_queue": job_queue, "result_queue": result_queue},
            "model": {"name": model_path, "device": "cpu"},
            "workers": {"count": 1, "drain_timeout": 120.0},
            # The sections compare whisperd with whisper itself, so the speech gate and the short
            # window (on by default in whisperd, measured in bench/vad.py and bench/real_hosts.py)
            # stay out of their way.
            "transcribe": {"vad": False, "short_window": False},
        }
        super().__init__(root, base, cwd=REPO)
        self.configure(**sections)
