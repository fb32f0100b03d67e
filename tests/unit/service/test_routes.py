"""One request path: every route is a FastAPI route, so what the app depends on reaches all."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from agent_service import app as app_module
from agent_service.deps import authenticate
from agent_service.errors import ApiError


def test_a_dependency_of_the_app_reaches_every_route_including_the_hot_one(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a future auth dependency relies on: no route is answered beside FastAPI."""
    calls: list[str] = []

    async def refuse(request: Request) -> None:
        calls.append(request.url.path)
        raise ApiError(418, "refused-by-test", "an app-wide dependency refused the request")

    monkeypatch.setattr(
        app_module, "FastAPI", functools.partial(FastAPI, dependencies=[Depends(refuse)])
    )
    client = make_client(wait_ready=False)
    routes = [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("POST", "/v1/chat"),
        ("POST", "/v1/chat/stream"),
        ("GET", "/v1/sessions/one"),
        ("DELETE", "/v1/sessions/one"),
    ]
    for method, path in routes:
        response = client.request(method, path, json={"message": "hi"})
        assert response.status_code == 418, (method, path, response.text)
        assert response.json()["error"] == "refused-by-test"
        assert response.headers["x-request-id"]
    assert calls == [path for _, path in routes]


@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/stream"])
def test_a_turn_resolves_its_routers_dependencies_per_request(
    client: TestClient, path: str
) -> None:
    """Overriding the router's dependency changes the hot route's answer: nothing short-cuts
    FastAPI, though the turn reads its own body and header."""
    app = client.app
    assert isinstance(app, FastAPI)

    def as_client(name: str) -> Callable[[Request], Awaitable[None]]:
        async def authenticated(request: Request) -> None:
            request.scope["state"]["client"] = name

        return authenticated

    try:
        app.dependency_overrides[authenticate] = as_client("carol")
        response = client.post(path, json={"session_id": "carols", "message": "as sent"})
        assert response.status_code == 200
        assert "as sent" in response.text
        # The turn claimed the session for carol: to dave it is unknown, to carol it is there.
        app.dependency_overrides[authenticate] = as_client("dave")
        assert client.get("/v1/sessions/carols").status_code == 404
        app.dependency_overrides[authenticate] = as_client("carol")
        assert client.get("/v1/sessions/carols").status_code == 200
    finally:
        app.dependency_overrides.clear()


def test_a_turn_answers_json_with_its_length_request_id_and_route_label(
    client: TestClient,
) -> None:
    response = client.post("/v1/chat", json={"session_id": "one-path", "message": "calc 6*7"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    body = response.json()
    assert body["reply"] == "calc: 42"
    assert body["tool_calls"][0]["name"] == "calculator"
    assert response.headers["x-request-id"] == body["request_id"]
    assert client.get("/healthz").content == b'{"status":"ok"}'
    metrics = client.get("/metrics").text
    assert 'agent_http_requests_total{method="POST",route="/v1/chat",status="200"} 1.0' in metrics
    assert 'agent_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in metrics


@pytest.mark.parametrize(
    ("content", "content_type", "loc", "kind"),
    [
        (b'{"message": "hi"}', "text/plain", ["body"], "model_type"),
        (b'{"message": ""}', "application/json", ["body", "message"], "string_too_short"),
        (b'{"message": "hi", "x": 1}', "application/json", ["body", "x"], "extra_forbidden"),
        (b"\xff\xfe", "application/json", ["body", 0], "json_invalid"),
        (b'{"message": "hi"', "application/json", ["body", 16], "json_invalid"),
        (b"", "application/json", ["body"], "missing"),
        (b'{"message": 5}', "application/vnd.moorage+json", ["body", "message"], "string_type"),
    ],
)
def test_a_refused_body_says_where_and_why_in_fastapis_shape(
    client: TestClient, content: bytes, content_type: str, loc: list[Any], kind: str
) -> None:
    response = client.post("/v1/chat", content=content, headers={"content-type": content_type})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid-request"
    assert [(d["loc"], d["type"]) for d in body["detail"]] == [(loc, kind)]
    assert all(set(d) == {"loc", "msg", "type"} for d in body["detail"])


def test_the_openapi_document_still_describes_the_chat_body(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for path in ("/v1/chat", "/v1/chat/stream"):
        body = document["paths"][path]["post"]["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        assert body["required"] is True
        assert schema["required"] == ["message"]
        assert schema["additionalProperties"] is False
    answer = document["paths"]["/v1/chat"]["post"]["responses"]["200"]["content"]
    assert answer["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatResponse"}
