"""Cross-site requests: what a browser sends on behalf of another site is refused."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from fastapi import Request

from whisperd.api.errors import ApiError


def same_origin(origin: str, host: str | None) -> bool:
    """A page served by this API itself (its /docs), reached by IP address or as localhost.

    A host *name* does not count: with DNS rebinding, any web page can make its own name point at
    this address and pass a same-origin check, so names must be listed in api.allowed_origins.
    """
    if not host:
        return False
    netloc = urlsplit(origin).netloc.lower()
    if netloc != host.lower():
        return False
    hostname = urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost":
        return True
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def check_origin(request: Request, allowed: frozenset[str]) -> None:
    """Refuse what a browser sends on behalf of another site (a form or fetch from any web page)."""
    origin = request.headers.get("origin")
    site = request.headers.get("sec-fetch-site")
    if origin is not None:
        if origin.lower() in allowed:
            return
        if site in (None, "same-origin") and same_origin(origin, request.headers.get("host")):
            return
        raise ApiError(403, "cross_origin", f"requests from origin {origin[:100]!r} are not accepted "
                                            "(see api.allowed_origins)")  # fmt: skip
    if site not in (None, "same-origin", "none"):
        raise ApiError(403, "cross_origin", f"cross-site requests are not accepted (Sec-Fetch-Site: {site[:20]})")
