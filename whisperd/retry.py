"""Trying again after a failure: one exponential backoff, and closing what the failure left.

Shared by the worker (broker reconnects), the API (its completion reader), the broker module
(publish retries) and the supervisor (crash-loop restarts), so they all back off the same way.
"""

from __future__ import annotations

import random
from typing import Any


class Backoff:
    """Delays of ``first``, twice that, ... up to ``limit``; ``jitter`` spreads each by ±that fraction
    (so workers that lost the broker together do not all come back in the same instant)."""

    def __init__(self, first: float, limit: float, jitter: float = 0.0) -> None:
        self.first, self.limit, self.jitter = first, limit, jitter
        self.attempt = 0

    def delay(self, attempt: int) -> float:
        """The delay before try ``attempt`` (1-based) after as many failures, without jitter."""
        return min(self.limit, self.first * 2.0 ** max(0, attempt - 1))

    def next(self) -> float:
        """The delay after one more failure."""
        self.attempt += 1
        delay = self.delay(self.attempt)
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else delay

    def reset(self) -> None:
        """A success: the next failure waits ``first`` again."""
        self.attempt = 0


def close_quietly(resource: Any) -> None:
    """Close a connection (or socket) that may already be broken: there is nothing left to release,
    and a failure here must not hide the error that got us here."""
    if resource is None:
        return
    try:
        if getattr(resource, "is_open", True):
            resource.close()
    except Exception:  # already broken: nothing more to release
        pass
