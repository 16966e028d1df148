"""Result files: served only when they are verifiably the task's own."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import BinaryIO


def open_result(results_dir: str, task_id: str, fmt: str, recorded: str | None) -> BinaryIO | None:
    """The task's own result file, opened; None unless it is verifiably that task's.

    A completion names its files, and anyone who may publish to the result queue can forge one
    (pointing a task at another task's file). So the recorded path must be
    ``results_dir/<task_id>.<format>``, and what is opened there must be a regular file with one
    link, opened without following a symlink (and without blocking on a FIFO).
    """
    real_dir = os.path.realpath(results_dir)
    name = f"{task_id}.{fmt}"
    if recorded is None or os.path.basename(recorded) != name:
        return None
    if os.path.realpath(os.path.dirname(recorded)) != real_dir:
        return None
    try:
        fd = os.open(os.path.join(real_dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def read_chunks(f: BinaryIO, size: int = 64 * 1024) -> Iterator[bytes]:
    with f:
        while chunk := f.read(size):
            yield chunk
