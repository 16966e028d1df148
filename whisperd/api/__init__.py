"""``whisperd api``: an optional reference HTTP API for sites without their own producer.

POST /transcriptions streams the upload under media_root and queues a job; a background thread
consumes the result queue and records every completion; GET /transcriptions/{id} answers from
those records, one small JSON file per task in ``api.state_dir`` (``store``), written before the
completion is acked, so completions that arrive while the API is down wait in the (durable)
result queue and are read on the next start. Every request is treated as hostile (``form``,
``receive``, ``origin``, ``hosts``, ``connections``).

The modules, one job each: ``app`` (the factory), ``routes``, ``context`` (what routes work with),
``records`` and ``store`` (task records), ``form`` and ``receive`` (uploads coming in),
``uploads`` (the upload directory), ``publisher`` (jobs out), ``completions`` and ``listener``
(results in), ``auth``, ``origin``, ``hosts``, ``result_files``, ``errors``, ``connections``,
``logthrottle``, ``tuning`` and ``server`` (``whisperd api`` itself).

Imports FastAPI; install with ``pip install 'whisperd[api]'``.
"""

from __future__ import annotations

import sys

from whisperd.api import server
from whisperd.api.app import create_app
from whisperd.api.errors import ApiError
from whisperd.api.records import TaskRecord, view
from whisperd.api.store import TaskStore
from whisperd.api.tuning import Tuning
from whisperd.config import Config

__all__ = ["ApiError", "TaskRecord", "TaskStore", "Tuning", "create_app", "serve", "view"]

# Tuning's defaults as module constants: ``serve`` reads them when it starts, so that a test can
# set whisperd.api.HEAD_TIMEOUT_S (say) before ``whisperd api`` runs (tests/fixtures/api_process.py).
_DEFAULTS = Tuning()
PUBLISH_RETRY_S = _DEFAULTS.publish_retry_s
MAX_PENDING_PUBLISHES = _DEFAULTS.max_pending_publishes
UPLOAD_DEADLINE_S = _DEFAULTS.upload_deadline_s
UPLOAD_GRACE_S = _DEFAULTS.upload_grace_s
UPLOAD_MIN_RATE = _DEFAULTS.upload_min_rate
UPLOADS_PER_CLIENT = _DEFAULTS.uploads_per_client
ORPHAN_AGE_S = _DEFAULTS.orphan_age_s
HEAD_TIMEOUT_S = _DEFAULTS.head_timeout_s
ALLOWED_HOSTS = _DEFAULTS.allowed_hosts


def serve(cfg: Config, listen: str | None = None) -> int:
    """``whisperd api``: serve with this module's constants as they are now."""
    return server.serve(cfg, listen, Tuning.from_constants(sys.modules[__name__]))
