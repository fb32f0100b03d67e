"""The request shell: what escapes the app still leaves as JSON with the request id, and counts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi.testclient import TestClient

from agent_service.metrics import Metrics
from agent_service.middleware import ShellMiddleware


def test_an_unexpected_error_is_a_json_500_with_the_request_id(make_client) -> None:  # type: ignore[no-untyped-def]
    client: TestClient = make_client()

    async def boom() -> None:
        raise RuntimeError("bug")

    client.app.add_api_route("/boom", boom)  # type: ignore[attr-defined]
    response = client.get("/boom", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "message": "internal error"}
    assert response.headers["x-request-id"] == "req-500"


def _run(app: Any, method: str, path: str, incoming: list[dict[str, Any]]) -> tuple[list, Metrics]:
    """Drive the middleware as a server would; the messages it sent and its metrics."""
    metrics = Metrics()
    shell = ShellMiddleware(app, metrics=metrics, max_body_bytes=65_536)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [], "state": {}}
    asyncio.run(shell(scope, receive, send))
    return sent, metrics


def _count(metrics: Metrics, route: str, status: str) -> float | None:
    labels = {"method": "POST", "route": route, "status": status}
    return metrics.registry.get_sample_value("agent_http_requests_total", labels)


def test_a_client_that_leaves_before_its_body_is_counted_499_not_500(make_client) -> None:  # type: ignore[no-untyped-def]
    client: TestClient = make_client()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat",
        "raw_path": b"/v1/chat",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": dict(client.app_state),
    }
    # Through the real app and route, in the loop its lifespan runs in.
    client.portal.call(client.app, scope, receive, send)  # type: ignore[union-attr]
    assert sent == []
    metrics = client.get("/metrics").text
    assert 'agent_http_requests_total{method="POST",route="/v1/chat",status="499"} 1.0' in metrics
    assert 'route="/v1/chat",status="500"' not in metrics


def test_a_request_cancelled_at_shutdown_is_a_json_503_with_the_request_id() -> None:
    async def cancelled(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        raise asyncio.CancelledError("Task cancelled, timeout graceful shutdown exceeded")

    sent, metrics = _run(cancelled, "POST", "/v1/other", [])
    start, body = sent
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert b"x-request-id" in headers
    assert json.loads(body["body"])["error"] == "shutting-down"
    assert _count(metrics, "unmatched", "503") == 1


def test_a_stream_cancelled_at_shutdown_ends_with_an_error_event() -> None:
    async def streaming(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"event: session\n\n", "more_body": True})
        raise asyncio.CancelledError

    sent, _ = _run(streaming, "POST", "/v1/chat/stream", [])
    last = sent[-1]
    assert last["more_body"] is False
    assert last["body"].startswith(b"event: error\ndata: ")
    assert b"shutting-down" in last["body"]
