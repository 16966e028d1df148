"""RabbitMQ topology and publishing, shared by workers and ``whisperd submit``.

The job queue is a durable quorum queue with a delivery limit and a dead-letter queue, so a job
that keeps killing its worker ends up parked instead of looping. Completions are persistent and
published with confirms: a caller only acks a job after ``publish`` returned.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pika
import pika.exceptions

from whisperd.config import BrokerConfig, Config, job_deadline_s

JSON = "application/json"
BACKSTOP_EXTRA_DELIVERIES = 20
CONSUMER_TIMEOUT_MARGIN_S = 600


def dead_letter_queue(cfg: BrokerConfig) -> str:
    return f"{cfg.job_queue}.dead"


def job_queue_arguments(cfg: BrokerConfig) -> dict[str, Any]:
    """Arguments of the job queue; producers that declare it must pass the same ones."""
    return {
        "x-queue-type": "quorum",
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


def connect(cfg: BrokerConfig, name: str, heartbeat: int | None = None) -> pika.BlockingConnection:
    """Connect to the first node that answers (pika tries the candidates in turn)."""
    return pika.BlockingConnection([connection_parameters(cfg, name, url, heartbeat) for url in cluster_urls(cfg)])


class TopologyMismatch(RuntimeError):
    """The job queue exists with other arguments (e.g. as a classic queue)."""


def declare(channel: Any, cfg: BrokerConfig) -> None:
    """Declare the dead-letter, job and result queues (idempotent)."""
    channel.queue_declare(dead_letter_queue(cfg), durable=True, arguments={"x-queue-type": "quorum"})
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
    channel.queue_declare(cfg.result_queue, durable=True)


def refuse_reply_to(cfg: BrokerConfig, reply_to: str) -> str | None:
    """Why whisperd will not send a completion to this ``reply_to``, or None when it may.

    A completion sent to the job queue would come back as a job, and one sent to the dead-letter
    queue would pose as a dead job; ``broker.reply_to_prefixes`` narrows replies further.
    """
    if reply_to in (cfg.job_queue, dead_letter_queue(cfg)):
        return "it is one of whisperd's own queues"
    if cfg.reply_to_prefixes and not reply_to.startswith(tuple(cfg.reply_to_prefixes)):
        return "it does not start with one of broker.reply_to_prefixes"
    return None


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
