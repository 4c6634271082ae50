"""One error shape everywhere: `{"error": "<code>", "message": "<what is wrong and what to do>"}`.

Routes raise `ApiError`; the handlers installed here turn it, the core's errors (one
hierarchy, `creditsync.errors`, mapped by kind in `from_core`), FastAPI's validation errors,
Starlette's 404/405, an unreachable database (503 with `Retry-After`) and anything
unexpected (500) into that shape. `responses()` documents the same shape in the OpenAPI.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from creditsync import errors as core_errors
from creditsync.storage import database
from creditsync_api import schemas

log = logging.getLogger("creditsync.api")

RETRY_AFTER_S = 5

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}

_DESCRIPTIONS = {
    400: "Malformed request.",
    401: "Missing, invalid or expired credentials; `error` says which.",
    402: "Not enough credits left.",
    404: "Not found.",
    409: "Conflict with the current state.",
    413: "Request body too large.",
    422: "The request does not match the documented parameters or body.",
    429: "Too many requests; retry after `Retry-After` seconds.",
    503: "The database is unreachable; retry after `Retry-After` seconds. Nothing was "
         "acknowledged.",
}


class ApiError(Exception):
    """An error answer: HTTP status, machine-readable code, and a message saying what to do."""

    def __init__(
        self, status: int, code: str, message: str, *,
        headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def respond(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(body(code, message, **extra), status_code=status,
                        headers=dict(headers or {}))


is_unavailable = database.is_unavailable

# The HTTP status of each kind of core error (the most specific class listed wins); the
# code and message come from the error itself.
_CORE_STATUS: tuple[tuple[type[core_errors.CreditsyncError], int], ...] = (
    (core_errors.InvalidRequest, 400),
    (core_errors.InsufficientCredits, 402),
    (core_errors.NotFound, 404),
    (core_errors.Conflict, 409),
    (core_errors.RateLimited, 429),
    (core_errors.Unavailable, 503),
    (core_errors.CatalogError, 503),  # an empty or broken catalog: an operator must fix it
    (core_errors.ConfigError, 503),
)


def unavailable_error() -> ApiError:
    return ApiError(
        503, "database_unavailable",
        "the database is unreachable; nothing was stored or changed: retry after "
        f"{RETRY_AFTER_S} seconds",
        headers={"Retry-After": str(RETRY_AFTER_S)})


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return respond(exc.status, exc.code, exc.message, exc.headers, **exc.extra)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    if exc.status_code == 404:
        message = f"no route {request.url.path}: see /docs for the API's routes"
    elif exc.status_code == 405:
        message = (f"{request.method} is not allowed on {request.url.path}; allowed: "
                   f"{(exc.headers or {}).get('Allow', 'see /docs')}")
    elif exc.status_code == 400:
        code, message = "malformed_body", (f"{exc.detail}: the body must be JSON as documented "
                                           "at /docs")
    else:
        message = str(exc.detail)
    return respond(exc.status_code, code, message, exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors()[:10]:
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return respond(422, "invalid_request",
                   "; ".join(problems) + " (see /docs for the expected request)")


async def _database_error(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, sa_exc.DataError | psycopg.DataError):  # a value it cannot hold
        log.warning("database refused a value: %s", exc)
        return respond(400, "invalid_value",
                       "a value in the request cannot be stored (e.g. a NUL character or a "
                       "number out of range): correct it and retry")
    if is_unavailable(exc):
        log.warning("database unavailable: %s", exc, extra={"error": type(exc).__name__})
        error = unavailable_error()
        return respond(error.status, error.code, error.message, error.headers)
    return await _unexpected(_request, exc)


def from_core(exc: core_errors.CreditsyncError) -> ApiError:
    """The answer to a core error: its status by kind, its own code and message."""
    if isinstance(exc, core_errors.DatabaseUnavailable):
        return unavailable_error()
    status = next((code for kind, code in _CORE_STATUS if isinstance(exc, kind)), 500)
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if isinstance(exc, core_errors.RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    elif status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if isinstance(exc, core_errors.InsufficientCredits):
        extra = {"creditsRemaining": exc.remaining, "requested": exc.requested}
    elif isinstance(exc, core_errors.IdempotencyConflict):
        extra = {"firstAmount": exc.first_amount, "amount": exc.amount}
    return ApiError(status, exc.code, exc.message, headers=headers, extra=extra)


async def _core_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, core_errors.CreditsyncError)
    if isinstance(exc, core_errors.DatabaseUnavailable):
        return await _database_error(request, exc)
    return await _api_error(request, from_core(exc))


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error: %s", exc, exc_info=exc)
    return respond(500, "internal_error",
                   "an unexpected error occurred; it was logged: retry, and report it if it "
                   "persists")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(sa_exc.SQLAlchemyError, _database_error)
    app.add_exception_handler(psycopg.Error, _database_error)
    app.add_exception_handler(psycopg_pool.PoolTimeout, _database_error)
    app.add_exception_handler(core_errors.CreditsyncError, _core_error)
    app.add_exception_handler(Exception, _unexpected)


def responses(*statuses: int, **special: type[schemas.ApiModel]) -> dict[int | str, Any]:
    """OpenAPI entries for these error statuses, all with the one error shape.

    `special` maps `"s402"`-style keys to a model that extends the error shape. Every route
    may answer 413 (`limits.BodyLimit` refuses an oversized body before any route runs),
    422 and 500.
    """
    out: dict[int | str, Any] = {}
    for status in dict.fromkeys((*statuses, 413, 422, 500)):
        model = special.get(f"s{status}", schemas.ErrorBody)
        entry: dict[str, Any] = {"model": model, "description": _DESCRIPTIONS.get(
            status, "Unexpected error (logged)." if status == 500 else "Error.")}
        if status in (429, 503):
            entry["headers"] = {"Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer"}}}
        out[status] = entry
    return out
