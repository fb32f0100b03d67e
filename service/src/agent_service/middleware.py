"""The request shell in one pure ASGI middleware: request id, body limit, metrics, request log."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_service.direct import ROUTES
from agent_service.errors import ApiError
from agent_service.metrics import Metrics

log = logging.getLogger("agent_service.request")

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# Probes and scrapes run every few seconds; log them only at debug level.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class ShellMiddleware:
    """Wraps every HTTP request; cheap enough to stay on the hot path."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                await _send_too_large(send_with_id, self.max_body_bytes)
            else:
                # The hot routes skip FastAPI's per-request machinery (see `direct`).
                direct = ROUTES.get((scope["method"], scope["path"]))
                if direct is not None:
                    await direct(scope, self._limited(receive), send_with_id, self.app)
                else:
                    await self.app(scope, self._limited(receive), send_with_id)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route_path, str(status)).inc()
            self.metrics.request_seconds.labels(scope["method"], route_path).observe(elapsed)
            path = scope["path"]
            level = logging.DEBUG if path in _QUIET_PATHS and status < 400 else logging.INFO
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": path,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "session_id": state.get("session_id"),
                    },
                )

    def _limited(self, receive: Receive) -> Receive:
        """Count body bytes as they arrive, for bodies without a Content-Length."""
        received = 0
        limit = self.max_body_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, "body-too-large", f"request body exceeds {limit} bytes")
            return message

        return limited_receive


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _REQUEST_ID.match(value):
            return bytes(value).decode()
    return uuid.uuid4().hex


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_too_large(send: Send, limit: int) -> None:
    body = json.dumps(
        {"error": "body-too-large", "message": f"request body exceeds {limit} bytes"}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
