"""Bounded decoding of AMQP header tables, for every consumer whisperd runs.

pika decodes a message's header table recursively inside the connection's I/O loop, before any
callback sees the message. Headers nested 800 deep (5.6 kB) raise RecursionError there: pika
closes the connection, the broker hands the same message to the next connection, and a consumer
that takes that for an outage reconnects forever. Here each table and array level is counted:
past ``MAX_DEPTH`` levels or ``MAX_VALUES`` values, or on any decoding error, the headers decode
as ``{UNDECODABLE: why}``. The table is length-prefixed, so it is skipped whole and the other
properties (reply_to, correlation_id, ...) decode as usual; the consumer then settles the message
like any other bad input instead of losing its connection.

``install()`` patches ``pika.data``'s two table decoders once per process (``whisperd.broker``
calls it on import, so every consumer has it); pika's own code does the decoding.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import pika.data
import pika.exceptions

MAX_DEPTH = 32  # x-death, the deepest header RabbitMQ itself writes, is 4 levels
MAX_VALUES = 4096
UNDECODABLE = "x-whisperd-undecodable-headers"

_state = threading.local()
_original: tuple[Any, Any] | None = None


class _TooBig(Exception):
    """Raised inside pika's decoder to abandon a table that is nested too deep or holds too much."""


def install() -> None:
    """Route pika's table decoding through the guard (idempotent)."""
    global _original
    if _original is not None:
        return
    _original = (pika.data.decode_table, pika.data.decode_value)
    pika.data.decode_table = _decode_table
    pika.data.decode_value = _decode_value


def undecodable(headers: dict[str, Any] | None) -> str | None:
    """Why a message's headers could not be decoded, or None when they were."""
    if not headers:
        return None
    why = headers.get(UNDECODABLE)
    return why if isinstance(why, str) else None


def _decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
    assert _original is not None
    depth = getattr(_state, "depth", 0)
    _state.values = getattr(_state, "values", 0) + 1
    if depth >= MAX_DEPTH:
        raise _TooBig(f"headers nested deeper than {MAX_DEPTH} levels")
    if _state.values > MAX_VALUES:
        raise _TooBig(f"headers hold more than {MAX_VALUES} values")
    _state.depth = depth + 1
    try:
        return _original[1](encoded, offset)
    finally:
        _state.depth = depth


def _decode_table(encoded: bytes, offset: int) -> tuple[dict[str, Any], int]:
    assert _original is not None
    if getattr(_state, "depth", 0):  # a table inside a value: counted by _decode_value
        return _original[0](encoded, offset)
    _state.values = 0
    try:
        return _original[0](encoded, offset)
    except _TooBig as e:
        why = str(e)
    except RecursionError:
        why = "headers nested too deeply"
    except (pika.exceptions.InvalidFieldTypeException, struct.error, UnicodeDecodeError, ValueError, IndexError) as e:
        why = f"malformed headers ({type(e).__name__})"
    finally:
        _state.depth = 0
    try:
        end = offset + 4 + struct.unpack_from(">I", encoded, offset)[0]
    except struct.error:
        end = len(encoded)
    return {UNDECODABLE: why}, min(end, len(encoded))
