"""One JSON error shape for every failure: ``{"error": {"type", "message", "details"?}}``.

chatq's own exceptions map to status codes here, so routes raise them as they are.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match

from chatq.tasks.batch import BatchInvalid, BatchNotFound
from chatq.tasks.errors import (ChatQError, EventsGone, InvalidRequest, JobNotFound, NotCancellable, SessionBusy,
                                SessionExists)

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    type: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class APIError(Exception):
    """An error of the HTTP layer itself (auth, quota, lookups by this API)."""

    status_code = 500
    type = "internal_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = headers


class Unauthorized(APIError):
    status_code, type = 401, "unauthorized"

    def __init__(self, message: str):
        super().__init__(message, {"WWW-Authenticate": "Bearer"})


class NotFound(APIError):
    status_code, type = 404, "not_found"


class QuotaExceeded(APIError):
    status_code, type = 429, "quota_exceeded"


_CHATQ: dict[type[ChatQError], tuple[int, str]] = {
    InvalidRequest: (422, "invalid_request"),
    JobNotFound: (404, "not_found"),
    EventsGone: (410, "gone"),
    BatchNotFound: (404, "not_found"),
    SessionBusy: (409, "session_busy"),
    SessionExists: (409, "session_exists"),
    NotCancellable: (409, "not_cancellable"),
    ChatQError: (422, "invalid_request"),
}

_HTTP_TYPES = {413: "payload_too_large"}

_DESCRIPTIONS = {
    401: "Missing or unknown API key.",
    404: "Unknown or expired ID (another tenant's IDs are unknown too).",
    409: "The session is busy or already has history, or the job is no longer cancellable.",
    410: "The job's event log has expired, or was trimmed past the events asked for; the job itself may "
         "still be there (`GET /v1/jobs/{job_id}`).",
    413: "The request body is over the size limit.",
    422: "Invalid input.",
    429: "The tenant's queue quota is full; retry after the Retry-After seconds.",
    503: "Redis is unreachable; retry after the Retry-After seconds.",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses, so the schema documents every response a route sends."""
    return {code: {"model": ErrorResponse, "description": _DESCRIPTIONS[code]} for code in codes}


def error_response(status: int, type_: str, message: str, details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(type=type_, message=message, details=details))
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status, headers=headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status_code, exc.type, str(exc), headers=exc.headers)


async def _chatq_error(_: Request, exc: ChatQError) -> JSONResponse:
    status, type_ = next(_CHATQ[c] for c in type(exc).__mro__ if c in _CHATQ)
    if isinstance(exc, BatchInvalid):
        lines = [e.model_dump(exclude_none=True) for e in exc.errors]
        return error_response(status, type_, f"{len(lines)} invalid line(s); nothing was submitted", lines)
    return error_response(status, type_, str(exc))


async def _redis_down(_: Request, exc: redis.RedisError) -> JSONResponse:
    log.error("Redis unreachable: %s", exc)
    return error_response(503, "unavailable", "the store is unavailable; retry later", headers={"Retry-After": "5"})


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
               for e in exc.errors()]
    message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5]) or "invalid request"
    return error_response(422, "invalid_request", message, details)


def _allowed_methods(request: Request) -> str:
    """Every method of every route on this path: Starlette's 405 names only the first route's."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    status, headers = exc.status_code, dict(exc.headers or {})
    if status == 400:  # FastAPI's answer to a body it cannot read (not UTF-8, ...): invalid input
        return error_response(422, "invalid_request", f"the request body cannot be read: {exc.detail}")
    if status == 405:
        headers["Allow"] = _allowed_methods(request)
    phrase = _phrase(status)
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
    type_ = _HTTP_TYPES.get(status) or phrase.lower().replace(" ", "_").replace("-", "_")
    return error_response(status, type_, message, headers=headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error; it has been logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(ChatQError, _chatq_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    for unreachable in (redis.ConnectionError, redis.TimeoutError):
        app.add_exception_handler(unreachable, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
