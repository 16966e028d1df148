"""``whisperd api``: the app under uvicorn, with bounded connections and a throttled log."""

from __future__ import annotations

import logging
import os
import resource

from whisperd.api.app import create_app
from whisperd.api.auth import load_token
from whisperd.api.connections import BACKLOG, ConnectionGuard, connection_limit, guarded_protocol
from whisperd.api.logthrottle import install_log_throttle
from whisperd.api.tuning import Tuning
from whisperd.config import Config, ConfigError

log = logging.getLogger("whisperd.api")


def serve(cfg: Config, listen: str | None = None, tuning: Tuning | None = None) -> int:
    """Serve until SIGTERM; 2 for a configuration it cannot serve with."""
    import uvicorn

    from whisperd.config import split_listen

    tuning = tuning if tuning is not None else Tuning()
    host, port = split_listen(listen or cfg.api.listen)
    if not os.path.isdir(cfg.storage.media_root):
        log.error("storage.media_root %s does not exist", cfg.storage.media_root)
        return 2
    try:
        token = load_token(cfg.api)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    if not token and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("the API listens on %s without api.token: anyone who can reach it can submit jobs", host)
    guard = ConnectionGuard(connection_limit(), tuning.head_timeout_s)
    log.info("at most %d connections (RLIMIT_NOFILE %d)", guard.limit, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    config = uvicorn.Config(create_app(cfg, token, (host, port), tuning=tuning), host=host, port=port,
                            access_log=False, log_level=cfg.logging.level.lower(), http=guarded_protocol(guard),
                            backlog=BACKLOG)  # fmt: skip
    install_log_throttle()  # after uvicorn.Config, which configures its loggers
    uvicorn.Server(config).run()
    return 0
