"""The publisher: uploads' jobs onto the job queue, from one thread that no request thread waits in."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pika.exceptions

from whisperd import broker
from whisperd.api.tuning import Tuning
from whisperd.config import Config


class PublishTimeout(pika.exceptions.AMQPError):
    """A job waited for the publisher thread past its deadline (the broker is down or slow)."""


class Publisher:
    """Publishes jobs with confirms over one connection, from a thread of its own.

    When the broker node it is connected to is lost, a publish goes to another node of
    ``broker.urls`` (the upload waits, up to ``publish_retry_s`` from its request, instead of
    failing). The thread is not the request threads' pool: during an outage, uploads waiting to
    publish once took all 40 of those and every GET waited behind them (0.01 s became 45 s). At
    most ``max_pending_publishes`` wait; the next upload gets 503 at once.
    """

    def __init__(self, cfg: Config, tuning: Tuning) -> None:
        self.cfg = cfg
        self.retry_s = tuning.publish_retry_s
        self.max_pending = tuning.max_pending_publishes
        self.pending = 0  # jobs submitted to the thread and not finished (the event loop's thread only)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="publisher")
        # No heartbeat: idle between uploads; a dead connection shows at the next publish.
        self._publisher = broker.ConfirmedPublisher(
            cfg.broker, "whisperd api (publisher)", heartbeat=0, retry_for_s=self.retry_s
        )

    @property
    def full(self) -> bool:
        """As many jobs wait as may: the broker is down or slow."""
        return self.pending >= self.max_pending

    async def publish(self, body: bytes, task_id: str) -> None:
        """Return once a broker node confirmed the job; PublishTimeout or pika's error otherwise."""
        if self.full:
            raise PublishTimeout(f"{self.pending} jobs are waiting to be published")
        deadline = time.monotonic() + self.retry_s
        self.pending += 1
        future = self._executor.submit(self._publish, body, task_id, deadline)
        loop = asyncio.get_running_loop()
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._finished))
        await asyncio.wrap_future(future)

    def _finished(self) -> None:
        self.pending -= 1

    def _publish(self, body: bytes, task_id: str, deadline: float) -> None:
        """The publisher thread: publish unless the request's deadline passed while it waited."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise PublishTimeout(f"waited {self.retry_s:g} s for the publisher")
        self._publisher.retry_for_s = left
        props = broker.properties(correlation_id=task_id, message_id=task_id)
        self._publisher.publish(self.cfg.broker.job_queue, body, props)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._publisher.close()
