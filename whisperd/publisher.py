"""What a worker sends the broker about a job, always in the I/O thread (pika channels are not
thread-safe): the completion with confirms and only then the ack (or the dead letter), the copy
to the job's reply_to on a channel of its own, progress notes, and a job handed back.
"""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions

from whisperd import broker
from whisperd.config import BrokerConfig
from whisperd.contract import Completion
from whisperd.deliveries import Delivery
from whisperd.logs import Labelled
from whisperd.session import BrokerSession


class ReplyClosedConnection(Exception):
    """The broker closed the connection over a reply (a direct reply-to name of a node it does not
    know): the job was acked before, so the worker only reconnects, at once and without an outage."""

    def __init__(self, reply_to: str, error: BaseException) -> None:
        super().__init__(f"the broker closed the connection after a reply to {reply_to!r}: {broker.reason(error)}")


class Publisher:
    """Publishes on ``session``'s channels of the moment; every method runs in the I/O thread."""

    def __init__(self, cfg: BrokerConfig, session: BrokerSession, worker: str, log: Labelled) -> None:
        self.cfg = cfg
        self.session = session
        self.worker = worker  # named in dead letters' headers
        self.log = log

    def finish(self, d: Delivery, completion: Completion | None, ack: bool, reason: str | None = None) -> None:
        """Publish the completion with confirms, then ack (or dead-letter), then reply."""
        if not self.session.is_current(d.channel):
            return  # delivered on a connection that is gone: it is back in the queue
        if completion is not None:
            body, props = self._publish_result(d.channel, completion, d.props)
        if ack:
            d.channel.basic_ack(d.tag)
        else:
            self.dead_letter(d, reason or "rejected")
        if completion is not None and d.props.reply_to:
            # After the ack, and after a round trip that proves the broker has it: a reply that
            # costs the connection cannot make the broker hand the job out again.
            d.channel.basic_qos(prefetch_count=self.cfg.prefetch)
            self._reply_to_job(d.props, body, props)

    def requeue(self, d: Delivery, reason: str) -> None:
        """Hand a job that hit an unexpected error back to the broker.

        Started attempts are counted on disk, so a job that keeps failing ends as attempts_exhausted;
        one that fails before that (results_dir unwritable) meets the broker's delivery limit.
        """
        if self.session.is_current(d.channel):
            d.channel.basic_nack(d.tag, requeue=True)
            self.log.warning("job returned to the queue after: %s", reason)

    def dead_letter(self, d: Delivery, reason: str) -> None:
        """Move a job to the dead-letter queue with the reason in its headers, then ack it
        (the confirm comes before the ack, so the job is never lost)."""
        try:
            broker.park(d.channel, broker.dead_letter_queue(self.cfg), d.body, d.props, reason, self.worker)
        except pika.exceptions.UnroutableError:
            d.channel.basic_reject(d.tag, requeue=False)  # no dead-letter queue: the broker's DLX decides
            return
        d.channel.basic_ack(d.tag)

    def note(self, note: Completion, job_props: pika.BasicProperties | None) -> None:
        """A processing event on the channel of now (read here, not in the job thread: a reconnect
        in between must not send it on a closed channel and take the new connection down)."""
        channel = self.session.channel
        if channel is not None and channel.is_open:
            body, props = self._publish_result(channel, note, job_props)
            self._reply_to_job(job_props, body, props)

    def _publish_result(
        self, ch: Any, completion: Completion, job_props: pika.BasicProperties | None
    ) -> tuple[bytes, pika.BasicProperties]:
        """Publish to the result queue (confirmed); returns what a reply to the job's reply_to carries."""
        body = completion.to_json()
        correlation_id = (job_props.correlation_id if job_props else None) or completion.task_id
        props = broker.properties(correlation_id=correlation_id, message_id=f"{completion.task_id}:{completion.status}")
        broker.publish(ch, self.cfg.result_queue, body, props)
        return body, props

    def _reply_to_job(self, job_props: pika.BasicProperties | None, body: bytes, props: pika.BasicProperties) -> None:
        reply_to = job_props.reply_to if job_props else None
        if reply_to and reply_to != self.cfg.result_queue:
            self._reply(reply_to, body, props)

    def _reply(self, reply_to: str, body: bytes, props: pika.BasicProperties) -> None:
        """Best effort copy to the job's reply_to, on a channel of its own.

        The producer chooses reply_to, so it is hostile input: a queue that refuses publishes or
        a bad ``amq.rabbitmq.reply-to`` name may close the channel it is sent on. That must not
        take the job channel (and its unacked delivery) with it, nor hold up the ack.
        """
        refused = broker.refuse_reply_to(self.cfg, reply_to)
        if refused:
            self.log.warning("not replying to %r: %s", reply_to, refused)
            return
        try:
            channel = self.session.reply_channel()
            broker.publish(channel, reply_to, body, props, mandatory=False)
            channel.basic_qos(prefetch_count=1)  # a round trip: what the reply cost shows here
        except (pika.exceptions.ChannelError, pika.exceptions.ChannelClosed) as e:
            self.log.warning("could not reply to %r: %s", reply_to, broker.reason(e))
            self.session.forget_reply_channel()
        except pika.exceptions.ConnectionClosedByBroker as e:
            raise ReplyClosedConnection(reply_to, e) from None
