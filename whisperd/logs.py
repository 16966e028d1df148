"""Logging to stderr; under systemd each line carries its syslog priority for the journal.

journald reads a ``<N>`` prefix on stdout/stderr lines as the priority (``SyslogLevelPrefix=``,
on by default), so errors land as ``err`` and warnings as ``warning``. Workers inherit the
supervisor's stderr, so one setup serves every process of the service.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

# "scheme://user:password@": the password runs to the last "@" of the word (it may hold "@" or "/").
URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/\s@'\"]*):[^\s'\"]*@")
# A bare "user:password@host" outside a URL.
BARE_CREDENTIALS = re.compile(r"(?P<head>(?<![\w:])[\w.~%!$&*+,;=-]+):[^\s@/'\"]+@(?=[\w\[])")


def redact(text: str) -> str:
    """Hide passwords of URLs in ``text`` (``user:secret@host`` -> ``user:***@host``).

    Used on every log line and every config error: the journal is readable by more people
    than the 0640 config file that holds the broker password.
    """
    text = URL_CREDENTIALS.sub(r"\g<head>:***@", text)
    return BARE_CREDENTIALS.sub(r"\g<head>:***@", text)


PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def stderr_is_journal() -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM=dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    dev, _, ino = stream.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JournalFormatter(RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s [%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    logging.getLogger("pika").setLevel(logging.CRITICAL)


def set_level(level: str) -> None:
    logging.getLogger("whisperd").setLevel(level.upper())
    logging.getLogger().setLevel(logging.WARNING if level.upper() != "DEBUG" else logging.DEBUG)


class Labelled(logging.LoggerAdapter):
    """A logger whose every line starts with whose it is (``worker 2: ...``)."""

    def __init__(self, logger: logging.Logger, label: str) -> None:
        super().__init__(logger, {"label": label})

    def process(self, msg: object, kwargs: MutableMapping[str, Any]) -> tuple[object, MutableMapping[str, Any]]:
        return f"{self.extra['label']}: {msg}", kwargs  # type: ignore[index]
