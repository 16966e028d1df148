"""The API's fixed bounds that are not config keys (yet), in one value that the app factory takes.

They were module constants; tests shortened them by setting those constants before the API
started. They are still exposed as ``whisperd.api``'s upper-case constants, which
``whisperd.api.serve`` reads into a ``Tuning`` when it starts (see ``from_constants``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Tuning:
    """Deadlines and shares that bound what one client, or a broker outage, can take."""

    # How long an upload's job is offered to the cluster's nodes before a 503.
    publish_retry_s: float = 30.0
    # Jobs wait for the one publisher thread; more than this many waiting get 503 at once.
    max_pending_publishes: int = 16
    # Uploads: api.upload_idle_timeout_s bounds each read; these bound the whole upload, so a client
    # trickling a byte every few seconds cannot hold a slot (candidates for config keys).
    upload_deadline_s: float = 3600.0  # no upload takes longer (2 GiB needs 600 kB/s)
    upload_grace_s: float = 30.0  # then at least upload_min_rate bytes per second on average, from the start
    upload_min_rate: int = 16 * 1024
    uploads_per_client: int = 0  # concurrent uploads per client address; 0 = half of api.max_concurrent_uploads
    # An upload nobody owns (the API died mid-upload or before recording its task) is removed after this.
    orphan_age_s: float = 3600.0
    # Connections: a connection sends a complete request head this soon after it opens or goes idle.
    head_timeout_s: float = 10.0
    # Host names to accept besides the loopback ones (stands in for api.allowed_hosts).
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def from_constants(cls, namespace: Any) -> Tuning:
        """The values of ``namespace``'s upper-case attributes of the same names (PUBLISH_RETRY_S...).

        A test sets them as JSON, so a sequence (ALLOWED_HOSTS) may arrive as a list.
        """
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = getattr(namespace, f.name.upper(), f.default)
            values[f.name] = tuple(value) if isinstance(f.default, tuple) else value
        return cls(**values)
