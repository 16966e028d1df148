"""What the routes work with: one ``ApiContext`` per app, and the interfaces of its broker-facing parts.

The publisher and the completion listener are the only parts that talk to the broker; the app
factory takes any object with their interface, so the routes can be exercised in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request

from whisperd.api.receive import UploadReceiver
from whisperd.api.store import TaskStore
from whisperd.api.uploads import Uploads
from whisperd.config import Config


class JobPublisher(Protocol):
    """Puts an upload's job on the job queue (see ``publisher.Publisher``)."""

    @property
    def full(self) -> bool:
        """True while no more jobs may wait to be published: an upload is refused before its body."""
        ...

    async def publish(self, body: bytes, task_id: str) -> None:
        """Return once the job is confirmed; raise pika's AMQPError or OSError otherwise."""
        ...

    def close(self) -> None: ...


class CompletionSource(Protocol):
    """Records the result queue's completions in the store (see ``listener.CompletionListener``)."""

    @property
    def healthy(self) -> bool:
        """True while the records are current: GET answers can be trusted."""
        ...

    def health(self) -> dict[str, Any]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class ApiContext:
    """The API's parts, built once by ``create_app``; routes get it with ``Depends(get_context)``."""

    cfg: Config
    token: str  # "" for no authentication
    allowed_origins: frozenset[str]
    store: TaskStore
    uploads: Uploads
    receiver: UploadReceiver
    publisher: JobPublisher
    listener: CompletionSource


def get_context(request: Request) -> ApiContext:
    return request.app.state.context
