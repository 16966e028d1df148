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

# Where a URL starts: a scheme (at most 32 characters, so that a long word costs linear time).
URL_START = re.compile(r"[A-Za-z][\w+.-]{0,31}://")
# What may stand between two URLs of one line (a list's repr, "a or b"): a URL starting right
# after one of these ends the one before it; "a://" inside a password does not.
URL_SEPARATORS = frozenset(" \t'\",;=()[]<>{}")
MAX_USER = 256  # characters of a URL's user name looked at (bounded: linear in the line's length)
# A bare "user:password@host" outside a URL (bounded repetitions: linear in the line's length).
BARE_CREDENTIALS = re.compile(r"(?P<head>(?<![\w:])[\w.~%!$&*+,;=-]{1,256}):[^\s@/'\"]{1,1024}@(?=[\w\[])")


def hide_password(value: str) -> str:
    """One value that may be a URL, with what lies between ``user:`` and its last ``@`` hidden.

    A password may hold any character, quotes, spaces and "@" included, so in a single value
    everything up to the last "@" counts as the password: over-hiding beats printing it.
    """
    at = value.rfind("@")
    if at < 0:
        return value
    scheme = value.find("://", 0, at)
    colon = value.find(":", 0 if scheme < 0 else scheme + 3, at)
    return value if colon < 0 else f"{value[:colon]}:***{value[at:]}"


def _redact_urls(line: str) -> str:
    """Each URL of one line with its password hidden. A URL with a password runs to the last "@"
    before the next URL that follows a separator (so "a://" inside the password does not end it),
    or to the line's end."""
    starts = [m.start() for m in URL_START.finditer(line)]
    ends = _next_separated(line, starts)
    parts, done = [], 0
    for i, start in enumerate(starts):
        if start < done:
            continue
        colon = _password_colon(line, start)
        if colon < 0:
            continue
        j = ends[i]
        while j < len(starts) and starts[j] <= colon:
            j = ends[j]
        at = line.rfind("@", colon, starts[j] if j < len(starts) else len(line))
        if at >= 0:
            parts += [line[done:colon], ":***"]
            done = at
    return "".join([*parts, line[done:]])


def _next_separated(line: str, starts: list[int]) -> list[int]:
    """For each URL start, the index of the next one that follows a separator (len(starts): none)."""
    ends = [len(starts)] * len(starts)
    for i in range(len(starts) - 2, -1, -1):
        ends[i] = i + 1 if line[starts[i + 1] - 1] in URL_SEPARATORS else ends[i + 1]
    return ends


def _password_colon(line: str, start: int) -> int:
    """Where ``user:`` of the URL at ``start`` ends, or -1 (no user name there: none of ``/@``, a
    space or a tab before the colon)."""
    authority = line.index("://", start) + 3
    colon = line.find(":", authority, authority + MAX_USER)
    if colon < 0 or any(c in "/@ \t" for c in line[authority:colon]):
        return -1
    return colon


def redact(text: str) -> str:
    """Hide passwords of URLs in ``text`` (``user:secret@host`` -> ``user:***@host``).

    Used on every log line and every config error: the journal is readable by more people
    than the 0640 config file that holds the broker password. A password may hold spaces,
    quotes, "@" or "/": it runs to the last "@" before the next URL of the line.
    """
    text = "\n".join(_redact_urls(line) for line in text.split("\n"))
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
