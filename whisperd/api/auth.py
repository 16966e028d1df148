"""Bearer-token authentication: ``api.token`` (or ``api.token_file``), compared in constant time."""

from __future__ import annotations

import hmac
import os
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from whisperd.api.context import ApiContext, get_context
from whisperd.api.errors import ApiError
from whisperd.config import ApiConfig, ConfigError

MIN_TOKEN_CHARS = 16

# Module level: FastAPI resolves the (postponed) annotations that name it in this module's globals.
BEARER = HTTPBearer(auto_error=False, description="api.token, when one is configured")


def load_token(api: ApiConfig) -> str:
    """``api.token`` or the contents of ``api.token_file``; "" when neither is set (no authentication)."""
    if api.token and api.token_file:
        raise ConfigError("api.token and api.token_file: set one of them, not both")
    token = api.token
    if api.token_file:
        try:
            with open(api.token_file, encoding="utf-8") as f:
                mode = os.fstat(f.fileno()).st_mode
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"api.token_file: cannot read {api.token_file}: {type(e).__name__}") from None
        if mode & 0o007:
            raise ConfigError(f"api.token_file: {api.token_file} is open to other users; chmod 600 (or 640) it")
        if not token:
            raise ConfigError(f"api.token_file: {api.token_file} is empty")
    if token and (len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token):
        # The value itself is never shown: it is a secret even when it is a bad one.
        raise ConfigError(
            f"api.token: must be at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces "
            "(e.g. the output of `openssl rand -hex 32`)"
        )
    return token


def authorize(ctx: Annotated[ApiContext, Depends(get_context)],
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:  # fmt: skip
    """Every route but /healthz: 401 without the configured token (none configured: no authentication)."""
    if not ctx.token:
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    if not hmac.compare_digest(given, ctx.token.encode()):
        raise ApiError(401, "unauthorized", "a valid bearer token is required",
                       headers={"WWW-Authenticate": 'Bearer realm="whisperd"'})  # fmt: skip
