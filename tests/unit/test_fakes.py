"""The fakes keep the real signatures, so the worker and the pipeline call them as they call pika
and the transcriber: a fake that drifts from what it stands in for would let a wrong call pass."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from whisperd.pipeline import Pipeline
from whisperd.transcriber import Transcriber

from .fakes import FakeChannel, FakeConnection, FakePipeline, FakeTranscriber


def parameters(fn: Callable[..., Any]) -> list[tuple[str, Any]]:
    """Names, kinds and defaults (annotations differ in spelling only)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(
    ("fake", "real", "names"),
    [
        (FakeChannel, BlockingChannel, ["basic_publish", "basic_ack", "basic_nack", "basic_reject", "basic_qos",
                                        "basic_consume", "basic_cancel", "confirm_delivery", "queue_declare", "close"]),
        (FakeConnection, BlockingConnection, ["add_callback_threadsafe", "channel", "process_data_events", "close"]),
        (FakePipeline, Pipeline, ["run", "refuse", "set_threads"]),
        (FakeTranscriber, Transcriber, ["check", "transcribe"]),
    ],
    ids=["channel", "connection", "pipeline", "transcriber"],
)  # fmt: skip
def test_a_fake_has_the_signatures_of_what_it_stands_in_for(fake: type, real: type, names: list[str]) -> None:
    for name in names:
        assert parameters(getattr(fake, name)) == parameters(getattr(real, name)), f"{fake.__name__}.{name}"
