"""RabbitMQ topology and publishing, shared by workers, ``whisperd submit`` and the API.

Every queue whisperd relies on is a durable quorum queue, replicated with Raft over the nodes of
a cluster, so losing a minority of the nodes loses neither jobs nor completions. The job queue
has a delivery limit and a dead-letter queue, so a job that keeps killing its worker ends up
parked instead of looping. Messages are persistent and published with confirms: a caller only
acks a job (or tells its user a job is queued) after the broker confirmed the publish.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from whisperd import amqp_guard
from whisperd.config import BrokerConfig, Config, job_deadline_s
from whisperd.retry import Backoff, close_quietly

log = logging.getLogger("whisperd.broker")

JSON = "application/json"
QUORUM = {"x-queue-type": "quorum"}
BACKSTOP_EXTRA_DELIVERIES = 20
CONSUMER_TIMEOUT_MARGIN_S = 600
AUTH_ERRORS = (pika.exceptions.ProbableAuthenticationError, pika.exceptions.ProbableAccessDeniedError)

amqp_guard.install()  # every consumer whisperd runs connects through this module


def dead_letter_queue(cfg: BrokerConfig) -> str:
    return f"{cfg.job_queue}.dead"


def parked_queue(queue: str) -> str:
    """Where a consumer of ``queue`` parks the messages it cannot take (``<queue>.dead``)."""
    return f"{queue}.dead"


# The result queue's arguments are part of the contract (its consumers may declare it with only
# x-queue-type: quorum, and RabbitMQ refuses a declare with other arguments), so its delivery limit
# is kept by its consumers: a message the broker has delivered this many times is parked.
RESULT_DELIVERY_LIMIT = 5


def delivery_count(props: pika.BasicProperties) -> int:
    """How many times a quorum queue delivered this message before (its x-delivery-count header)."""
    count = (props.headers or {}).get("x-delivery-count")
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def park(channel: Any, queue: str, body: bytes, props: pika.BasicProperties, reason: str, by: str) -> None:
    """Move a message its consumer cannot take to ``queue`` with the reason in its headers, then the
    caller acks it. Published rather than rejected, so whoever inspects it reads why
    (``x-whisperd-reason``); with confirms on, the publish is confirmed before the ack.
    Headers that could not be decoded are not copied (they are what made the message unreadable).
    """
    headers = {} if amqp_guard.undecodable(props.headers) else dict(props.headers or {})
    headers.update({"x-whisperd-reason": reason[:1000], "x-whisperd-worker": by})
    parked = pika.BasicProperties(
        content_type=props.content_type,
        delivery_mode=pika.DeliveryMode.Persistent,
        correlation_id=props.correlation_id,
        message_id=props.message_id,
        headers=headers,
    )
    publish(channel, queue, body, parked)


def job_queue_arguments(cfg: BrokerConfig) -> dict[str, Any]:
    """Arguments of the job queue; producers that declare it must pass the same ones."""
    return {
        **QUORUM,
        # Only a backstop: whisperd counts started attempts itself and dead-letters a job after
        # max_attempts with a failed completion. The broker also counts harmless returns (a
        # draining worker handing back a job it never started), so its limit is looser.
        "x-delivery-limit": cfg.max_attempts + BACKSTOP_EXTRA_DELIVERIES,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue(cfg),
    }


def consumer_timeout_ms(cfg: Config) -> int:
    """The per-consumer ack timeout whisperd asks for: longer than any job may legally run.

    RabbitMQ closes a channel whose delivery stays unacked past ``consumer_timeout`` (30 min by
    default), which would requeue a long transcription forever. whisperd enforces its own job
    deadline (``limits.job_timeout_s``), so the broker's must only be a backstop above it.
    """
    return int((job_deadline_s(cfg, cfg.limits.max_duration_s) + CONSUMER_TIMEOUT_MARGIN_S) * 1000)


def supports_consumer_timeout(server_version: str) -> bool:
    """``x-consumer-timeout`` as a consumer argument is honoured from RabbitMQ 3.11.15 on (older ignore it)."""
    try:
        parts = tuple(int(x) for x in server_version.split("+")[0].split("-")[0].split(".")[:3])
    except ValueError:
        return False
    return parts >= (3, 11, 15)


def server_version(connection: Any) -> str:
    """The version the broker announced in Connection.Start, or "" when it gave none.

    pika's BlockingConnection has no public way to read the server properties (it exposes only
    four capability flags), and AMQP has no other request for them. So this reads pika's private
    ``connection._impl.server_properties``, here and nowhere else; should a pika release move
    it, the version reads as unknown (the worker then warns about ack timeouts), nothing breaks.
    """
    properties = getattr(getattr(connection, "_impl", None), "server_properties", None)
    version = properties.get("version", b"") if isinstance(properties, dict) else b""
    return version.decode(errors="replace") if isinstance(version, bytes) else str(version)


def connection_parameters(
    cfg: BrokerConfig, name: str, url: str | None = None, heartbeat: int | None = None
) -> pika.URLParameters:
    params = pika.URLParameters(url or cfg.url)
    params.heartbeat = cfg.heartbeat if heartbeat is None else heartbeat
    params.connection_attempts = 1
    params.blocked_connection_timeout = max(cfg.heartbeat, 60) * 5
    params.client_properties = {"connection_name": name, "product": "whisperd"}
    return params


def cluster_urls(cfg: BrokerConfig) -> list[str]:
    """``broker.url`` and ``broker.urls``, starting at a random one so workers spread over the nodes."""
    urls = [cfg.url, *(u for u in cfg.urls if u != cfg.url)]
    start = random.randrange(len(urls))
    return urls[start:] + urls[:start]


class BrokerUnreachable(pika.exceptions.AMQPConnectionError):
    """No node in ``broker.url``/``broker.urls`` accepted a connection; says why for each."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no broker node answered"


def reason(e: BaseException) -> str:
    """The innermost cause of a pika error, short enough for a log line (pika nests them deeply)."""
    for _ in range(6):
        inner = getattr(e, "exception", None) or next((a for a in e.args if isinstance(a, BaseException)), None)
        if inner is None:
            break
        e = inner
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    text, kind = str(e), type(e).__name__
    return f"{kind}: {text}" if text and not text.startswith(kind) else text or kind


def connect(
    cfg: BrokerConfig, name: str, heartbeat: int | None = None, between: Callable[[], None] | None = None
) -> pika.BlockingConnection:
    """Connect to the first node that answers, trying each in turn.

    Raises ``BrokerUnreachable`` naming each node (host:port, never the credentials) and why it
    failed. ``between`` runs after each failed node, so a caller can report progress: a node
    that silently drops packets costs up to pika's socket timeout (10 s) per try.
    """
    failures = []
    for url in cluster_urls(cfg):
        params = connection_parameters(cfg, name, url, heartbeat)
        try:
            return pika.BlockingConnection(params)
        except AUTH_ERRORS:
            raise
        except (pika.exceptions.AMQPError, OSError) as e:
            failures.append(f"{params.host}:{params.port}: {reason(e)}")
        if between is not None:
            between()
    raise BrokerUnreachable("; ".join(failures))


class TopologyMismatch(RuntimeError):
    """The job queue exists with other arguments (e.g. as a classic queue)."""


class QueueUnavailable(pika.exceptions.AMQPError):
    """A queue whisperd needs exists but cannot be used now (a classic queue whose node is down)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "queue unavailable"


def declare(channel: Any, cfg: BrokerConfig) -> None:
    """Declare the dead-letter, job and result queues, all quorum queues (idempotent)."""
    channel.queue_declare(dead_letter_queue(cfg), durable=True, arguments=QUORUM)
    try:
        channel.queue_declare(cfg.job_queue, durable=True, arguments=job_queue_arguments(cfg))
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code != 406:
            raise
        raise TopologyMismatch(
            f"queue {cfg.job_queue!r} already exists with other arguments ({e.reply_text}); whisperd needs a "
            f"quorum queue with {json.dumps(job_queue_arguments(cfg))}. Migrate: stop producers, let it drain, "
            f"delete it (rabbitmqctl delete_queue {cfg.job_queue}) and restart whisperd, or set broker.job_queue "
            "to a new name"
        ) from None
    declare_result_queue(channel, cfg.result_queue)


_warned_classic: set[str] = set()


def declare_result_queue(channel: Any, queue: str) -> None:
    """Declare a queue of completions as a quorum queue.

    One that already exists as a classic queue (made by an older whisperd, or by a consumer) is
    used as it is, with a warning once per process: it works while its node is up, but it is
    lost with that node, and then ``QueueUnavailable`` says so, with the way out, at every try.
    The declare runs on a channel of its own: a refused declare closes the channel it ran on.
    """
    migrate = (
        f"to make it survive a node loss, migrate it to a quorum queue: stop whisperd on every host (jobs keep "
        f"queueing), let its consumer empty it, rabbitmqctl delete_queue {queue}, and start whisperd, which declares "
        "it as a quorum queue (consumers that declare it must pass x-queue-type=quorum); or set broker.result_queue "
        "to a new name"
    )
    probe = channel.connection.channel()
    try:
        probe.queue_declare(parked_queue(queue), durable=True, arguments=QUORUM)
        probe.queue_declare(queue, durable=True, arguments=QUORUM)
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:  # a classic queue whose node is down (a quorum queue has no single home)
            raise QueueUnavailable(f"result queue {queue!r} cannot be used now ({e.reply_text}); {migrate}") from None
        if e.reply_code != 406:
            raise
        if queue not in _warned_classic:
            _warned_classic.add(queue)
            log.warning("result queue %r is not a quorum queue (%s): it is lost with its node; %s",
                        queue, e.reply_text, migrate)  # fmt: skip
        return
    probe.close()


def refuse_reply_to(cfg: BrokerConfig, reply_to: str) -> str | None:
    """Why whisperd will not send a completion to this ``reply_to``, or None when it may.

    A completion sent to the job queue would come back as a job, and one sent to the dead-letter
    queue would pose as a dead job; ``broker.reply_to_prefixes`` narrows replies further.
    """
    if reply_to in (cfg.job_queue, dead_letter_queue(cfg)):
        return "it is one of whisperd's own queues"
    direct = reply_to.startswith(DIRECT_REPLY_PREFIX)
    if direct and not _direct_reply_name(reply_to[len(DIRECT_REPLY_PREFIX) :]):
        return "it is not a direct reply-to name the broker gave out (one with a dot closes the whole connection)"
    if cfg.reply_to_prefixes and not reply_to.startswith(tuple(cfg.reply_to_prefixes)):
        return "it does not start with one of broker.reply_to_prefixes"
    return None


DIRECT_REPLY_PREFIX = "amq.rabbitmq.reply-to."
_ATOM_TAGS = {118: 2, 100: 2, 119: 1, 115: 1}  # (SMALL_)ATOM(_UTF8)_EXT -> bytes of its length field
_PID_TAIL = {88: 12, 103: 9}  # NEW_PID_EXT, PID_EXT -> bytes after the node name


def _direct_reply_name(rest: str) -> bool:
    """Whether ``rest`` (after ``amq.rabbitmq.reply-to.``) has the shape RabbitMQ gives its direct
    reply-to names: base64 of an Erlang pid term, a dot, base64 of a key.

    RabbitMQ 3.10 decodes a name with a dot in it as that pid and, when it is anything else,
    closes the publisher's whole connection (541 INTERNAL_ERROR); a name without a dot is
    dropped quietly. Only the shape can be checked here: a well-formed pid of a node the broker
    does not know still costs the connection, which the worker survives after its ack.
    """
    if "." not in rest:
        return True  # the broker drops it without harm
    parts = rest.split(".")
    if len(parts) != 2:
        return False
    try:
        pid, key = (base64.b64decode(p, validate=True) for p in parts)
    except (binascii.Error, ValueError):
        return False
    if not key or len(pid) < 4 or pid[0] != 131 or pid[1] not in _PID_TAIL or pid[2] not in _ATOM_TAGS:
        return False
    width = _ATOM_TAGS[pid[2]]
    start = 3 + width
    node = pid[start : start + int.from_bytes(pid[3:start], "big")]
    return b"@" in node and len(pid) == start + len(node) + _PID_TAIL[pid[1]]


def properties(correlation_id: str | None = None, reply_to: str | None = None, **kw: Any) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=JSON,
        delivery_mode=pika.DeliveryMode.Persistent,
        correlation_id=correlation_id,
        reply_to=reply_to,
        **kw,
    )


def publish(channel: Any, queue: str, body: bytes, props: pika.BasicProperties, mandatory: bool = True) -> None:
    """Publish to a queue via the default exchange; with confirms on, returns once the broker has it."""
    channel.basic_publish(exchange="", routing_key=queue, body=body, properties=props, mandatory=mandatory)


class ConfirmedPublisher:
    """Publishes with confirms over one connection; when its node is lost, publishes again on another.

    ``publish`` returns only once some node confirmed the message, trying again (reconnecting
    through every node in ``broker.urls``, 0.5 s doubling to ``broker.reconnect_max_s`` apart)
    until ``retry_for_s`` has passed. At least once: a node that dies after storing a message
    but before confirming it gets it a second time (same ``message_id``); whisperd answers the
    second copy of a job from its stored result. ``on_open`` runs on each new channel.
    """

    def __init__(
        self,
        cfg: BrokerConfig,
        name: str,
        heartbeat: int | None = None,
        retry_for_s: float = 60.0,
        on_open: Callable[[Any], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = name
        self.heartbeat = heartbeat
        self.retry_for_s = retry_for_s
        self.on_open = on_open
        self.connection: pika.BlockingConnection | None = None
        self.channel: Any = None

    def open(self) -> Any:
        """The channel, (re)connected and with the topology declared."""
        if self.connection is None or not self.connection.is_open or self.channel is None or not self.channel.is_open:
            self.close()
            self.connection = connect(self.cfg, self.name, self.heartbeat)
            self.channel = self.connection.channel()
            self.channel.confirm_delivery()
            try:
                declare(self.channel, self.cfg)
            except QueueUnavailable as e:  # completions cannot flow now; jobs still can, and wait for workers
                log.warning("%s", e)
            if self.on_open is not None:
                self.on_open(self.channel)
        return self.channel

    def publish(self, queue: str, body: bytes, props: pika.BasicProperties) -> None:
        deadline = time.monotonic() + self.retry_for_s
        backoff = Backoff(0.5, self.cfg.reconnect_max_s)
        while True:
            try:
                publish(self.open(), queue, body, props)
                return
            except AUTH_ERRORS:
                raise
            except (pika.exceptions.AMQPError, OSError) as e:
                self.close()
                delay = backoff.next()
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("publishing to %s failed (%s); trying again in %.1f s", queue, reason(e), delay)
            time.sleep(delay)

    def close(self) -> None:
        conn, self.connection, self.channel = self.connection, None, None
        close_quietly(conn)
