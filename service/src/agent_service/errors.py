"""Every error leaves as JSON with a machine-readable reason; no stack trace reaches a client."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from agent_service.metrics import Metrics
from agent_service.store import StoreUnavailable

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """What every error response carries."""

    error: str
    message: str
    detail: list[dict[str, Any]] | None = None


class ApiError(HTTPException):
    """An error with an HTTP status and a reason a client can act on."""

    def __init__(
        self, status: int, reason: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        # An HTTPException, so that FastAPI lets it through when raised while reading the body.
        super().__init__(status, message, headers)
        self.status = status
        self.reason = reason
        self.message = message


@contextlib.contextmanager
def store_unavailable_is_503(metrics: Metrics, operation: str) -> Iterator[None]:
    """Count a failed store operation and answer 503 `store-unavailable`, retryable."""
    try:
        yield
    except StoreUnavailable:
        metrics.store_errors.labels(operation).inc()
        raise ApiError(
            503,
            "store-unavailable",
            "the session store is unavailable; retry shortly",
            {"Retry-After": "1"},
        ) from None


def error_response(
    status: int,
    reason: str,
    message: str,
    detail: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON error response."""
    body: dict[str, Any] = {"error": reason, "message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


def _reason_for(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "-")
    except ValueError:
        return "error"


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.reason, exc.message, headers=exc.headers)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:
        # FastAPI's only 400 here: a body it could not decode (e.g. not UTF-8). To a client
        # that is malformed JSON like any other, so it gets the same 422.
        return error_response(422, "invalid-request", "the request body is not valid JSON")
    reason = _reason_for(exc.status_code)
    return error_response(exc.status_code, reason, str(exc.detail), headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Echoing the rejected input back is pointless and may reflect secrets or huge bodies.
    detail = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return error_response(422, "invalid-request", "the request does not match the schema", detail)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "unhandled error",
        exc_info=exc,
        extra={"request_id": request.scope.get("state", {}).get("request_id")},
    )
    return error_response(500, "internal", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    """Map every kind of failure to a JSON error response."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
