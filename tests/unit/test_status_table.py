"""``whisperd status``'s table (whisperd.control.format_status) from a status document."""

from __future__ import annotations

from whisperd.control import format_status

WORKER = {"slot": 1, "pid": 4242, "state": "busy", "task": "t-1", "task_elapsed_s": 3.0, "jobs_done": 2,
          "jobs_failed": 0, "rss_mb": 812.4, "gpu_mb": None, "diarizer": True}  # fmt: skip
STATUS = {"version": "0.1.0", "pid": 1, "state": "running", "workers": [WORKER, {**WORKER, "slot": 2, "pid": 4243,
          "state": "idle", "task": None, "task_elapsed_s": None, "diarizer": False}], "workers_wanted": 2,
          "jobs_done": 4, "jobs_failed": 0, "restarts": 0, "config": "/etc/whisperd/whisperd.toml",
          "socket": "/run/whisperd/control.sock", "broker": "ok", "job_queue": "whisperd.jobs", "queue_depth": 3,
          "dead_letter_depth": 0}  # fmt: skip


def test_the_table_says_which_workers_hold_the_diarizer():
    lines = format_status(STATUS).splitlines()
    assert lines[4].split() == ["SLOT", "PID", "STATE", "TASK", "ELAPSED", "DONE", "FAILED", "RSS", "GPU", "DIARIZER"]
    assert lines[5].split()[-1] == "loaded" and lines[5].split()[-4:-1] == ["812", "MB", "-"]
    assert lines[6].split()[-1] == "-"
