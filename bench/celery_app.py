"""The real-hosts section's Celery arm: the minimal app users build instead of a daemon.

RabbitMQ as the broker, ``rpc://`` as the result backend, one task that runs openai-whisper's
``model.transcribe(path)`` with its defaults; the model is loaded once per prefork child
(``worker_process_init``), and torch keeps its default thread count. Part of the bench, not of
whisperd. The worker is started by bench/real_hosts.py as

    celery -A bench.celery_app worker --pool=prefork --concurrency=<cores> -Q <queue>

with ``BENCH_CELERY_MODEL`` (the checkpoint) and ``BENCH_CELERY_QUEUE`` (a unique queue name)
in its environment.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from bench.daemon import BROKER_URL

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench-celery")
app = Celery("bench_celery", broker=BROKER_URL, backend="rpc://")
app.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True)
model: Any = None


@worker_process_init.connect
def load_model(**_: Any) -> None:
    """Load the model once in each prefork child (after the fork, as Celery's docs advise)."""
    global model
    import whisper

    model = whisper.load_model(os.environ["BENCH_CELERY_MODEL"], device="cpu")


@app.task(name="bench.transcribe")
def transcribe(path: str) -> dict[str, Any]:
    """``model.transcribe(path)`` with whisper's defaults; the text and the child's own figures."""
    import torch

    started = time.monotonic()
    result = model.transcribe(path)
    return {
        "text": result["text"].strip(),
        "s": time.monotonic() - started,
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
    }
