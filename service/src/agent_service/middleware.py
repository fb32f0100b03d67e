"""The request shell in one pure ASGI middleware: request id, body limit, metrics, request log.

It is the outermost layer the app controls, so it also answers what escapes everything inside:
an unexpected exception (JSON 500) and a request cancelled because the server's shutdown budget
ended (JSON 503 `shutting-down`), both with the request id. Statuses it records without a
response: 499 when the client left before an answer, 408 when the server closed a request whose
body did not arrive in time (see `protocol`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_service.errors import ApiError
from agent_service.metrics import Metrics

log = logging.getLogger("agent_service.request")

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# Probes and scrapes run every few seconds; log them only at debug level.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
CLIENT_GONE = 499  # nginx's "client closed request": no response was sent
REQUEST_TIMEOUT = 408
BODY_TIMED_OUT = "agent.body_timed_out"  # set in scope["state"] by the protocol (see `protocol`)


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
        response_started = False
        event_stream = False
        client_gone = False
        received = 0
        limit = self.max_body_bytes
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started, event_stream
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = message.get("headers", ())
                event_stream = any(
                    name == b"content-type" and value.startswith(b"text/event-stream")
                    for name, value in headers
                )
                message["headers"] = [*headers, header]
            await send(message)

        async def limited_receive() -> Message:
            """Note a disconnect; count body bytes, for bodies without a Content-Length."""
            nonlocal received, client_gone
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, "body-too-large", f"request body exceeds {limit} bytes")
            elif message["type"] == "http.disconnect":
                client_gone = True
            return message

        self.metrics.in_flight.inc()
        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                await _send_too_large(send_with_id, self.max_body_bytes)
            else:
                await self.app(scope, limited_receive, send_with_id)
            if not response_started and not client_gone and not state.get(BODY_TIMED_OUT):
                log.error("the app returned no response", extra={"request_id": request_id})
                await _send_json(send_with_id, 500, "internal", "internal error")
        except ClientDisconnect:
            client_gone = True  # the client left while its body was read: nobody to answer
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when AGENT_SHUTDOWN_TIMEOUT_S ends; this is the
            # documented end of such a request, not a crash: answer it and let the task end.
            log.warning(
                "request cancelled: the shutdown budget ended",
                extra={"request_id": request_id, "path": scope["path"]},
            )
            status = await _answer_shutting_down(send_with_id, response_started, event_stream)
        except Exception as exc:
            log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
            if response_started:
                raise  # too late for an answer: the server closes the connection
            await _send_json(send_with_id, 500, "internal", "internal error")
        finally:
            self.metrics.in_flight.dec()
            if state.get(BODY_TIMED_OUT):
                status = REQUEST_TIMEOUT  # the protocol answered 408 and closed (see `protocol`)
            elif client_gone and not response_started:
                status = CLIENT_GONE
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
                        "client": state.get("client"),
                    },
                )


async def _answer_shutting_down(send: Send, response_started: bool, event_stream: bool) -> int:
    """Tell the client the server stopped its request; the status to record."""
    message = "the server shut down before the request finished; retry"
    if not response_started:
        await _send_json(send, 503, "shutting-down", message, {b"retry-after": b"1"})
        return 503
    if event_stream:  # a stream already under way ends with an error event, like other failures
        data = json.dumps({"error": "shutting-down", "message": message}, separators=(",", ":"))
        chunk = f"event: error\ndata: {data}\n\n".encode()
        await send({"type": "http.response.body", "body": chunk, "more_body": False})
    else:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    return 200


async def _send_json(
    send: Send, status: int, reason: str, message: str, headers: dict[bytes, bytes] | None = None
) -> None:
    body = json.dumps({"error": reason, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or {}).items(),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
    await _send_json(send, 413, "body-too-large", f"request body exceeds {limit} bytes")
