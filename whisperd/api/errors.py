"""Refusals: every error the API answers is JSON with a stable machine-readable ``code``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("whisperd.api")


class ApiError(Exception):
    """A refused request: an HTTP status, a stable machine-readable ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "detail": message}, status_code=status, headers=headers)


def queue_unavailable() -> ApiError:
    return ApiError(503, "queue_unavailable", "the job queue is unreachable; try again later",
                    headers={"Retry-After": "10"})  # fmt: skip


def file_too_large(max_file_bytes: int) -> ApiError:
    return ApiError(413, "file_too_large", f"the file is larger than limits.max_file_mb = {max_file_bytes / 2**20:g}")


async def refused(request: Request, e: ApiError) -> JSONResponse:
    log.info("%s %s: %d %s", request.method, request.url.path, e.status, e.code)
    headers = dict(e.headers or {})
    if request.method == "POST":  # the rest of a refused upload is never read: close, do not skip it
        headers["Connection"] = "close"
    return error_response(e.status, e.code, e.message, headers)


async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route, wrong method), with a code like the API's."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    return error_response(e.status_code, code, str(e.detail), getattr(e, "headers", None))


async def crashed(request: Request, e: Exception) -> JSONResponse:
    """A bug: logged with its traceback; the client sees no internals."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=e)
    return error_response(500, "internal_error", "the API failed to answer; see its log")


async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    return error_response(422, "invalid_request", "the request does not match the API (see /docs)")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, refused)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, crashed)
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]
