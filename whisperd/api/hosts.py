"""The Host header check: the API answers only to its own names (against DNS rebinding)."""

from __future__ import annotations

import ipaddress
import logging

from starlette._utils import parse_host_header
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from whisperd.api.errors import error_response
from whisperd.config import Config

log = logging.getLogger("whisperd.api")

# Host header: on a loopback address only these names (and api.allowed_hosts, once it exists).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(cfg: Config, listen_host: str, extra: tuple[str, ...] = ()) -> list[str] | None:
    """The Host names the API answers to; None for any (a non-loopback address with no names set).

    ``extra``: Tuning.allowed_hosts, names accepted besides those of api.allowed_hosts (once it exists).
    """
    names = [*extra, *getattr(cfg.api, "allowed_hosts", ())]
    if is_loopback(listen_host):
        return [*LOOPBACK_HOSTS, *names]
    return names or None


class HostCheck(TrustedHostMiddleware):
    """Starlette's TrustedHostMiddleware, for every route, answering with JSON and a code.

    DNS rebinding: a web page makes its own name resolve to 127.0.0.1 and has the visitor's
    browser read this API; those requests carry the page's name in Host. A loopback name must
    also carry the port the API listens on (or none); configured names may carry any.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: list[str], port: int) -> None:
        super().__init__(app, allowed_hosts, www_redirect=False)
        self.port = str(port)

    def allows(self, header: str | None) -> bool:
        parsed = parse_host_header(header)
        if parsed is None:
            return False
        host = parsed.host.lower()
        if host in LOOPBACK_HOSTS and parsed.port not in (None, self.port):
            return False
        return self.allow_any or any(
            host == p or (p.startswith("*") and host.endswith(p[1:])) for p in self.allowed_hosts
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.allows(Headers(scope=scope).get("host")):
            host = Headers(scope=scope).get("host", "")
            log.info("%s %s: 400 invalid_host (%r)", scope["method"], scope["path"][:100], host[:100])
            why = "this API does not answer to that Host header (see api.allowed_hosts)"
            answer = error_response(400, "invalid_host", why, headers={"Connection": "close"})
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)
