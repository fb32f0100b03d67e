"""The direct path (agent_service.direct) answers exactly as the FastAPI routes it short-cuts."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from agent_service import direct


def _without_direct_path(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(direct.ROUTES):
        monkeypatch.delitem(direct.ROUTES, key)


def _comparable(response) -> tuple[int, str, dict]:  # type: ignore[no-untyped-def]
    body = response.json()
    body.pop("request_id", None)
    return response.status_code, response.headers["content-type"], body


@pytest.mark.parametrize(
    ("session_id", "message"),
    [("direct-1", "hello"), ("direct-2", "calc 6*7"), (None, "time"), ("direct-3", "loop")],
)
def test_a_chat_turn_answers_the_same_with_and_without_the_direct_path(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, session_id: str | None, message: str
) -> None:
    body = (
        {"message": message}
        if session_id is None
        else {"session_id": session_id, "message": message}
    )
    fast = client.post("/v1/chat", json=body)
    _without_direct_path(monkeypatch)
    routed = client.post("/v1/chat", json=body)

    fast_view, routed_view = _comparable(fast), _comparable(routed)
    if session_id is None:  # each minted its own session
        assert fast_view[2].pop("session_id") != routed_view[2].pop("session_id")
    if message == "time":  # the clock tool's answer moves on
        fast_view[2].pop("reply"), routed_view[2].pop("reply")
        for view in (fast_view, routed_view):
            view[2]["tool_calls"][0].pop("result")
    assert fast_view == routed_view
    assert fast.headers["content-length"] == str(len(fast.content))
    assert fast.headers["x-request-id"] == fast.json()["request_id"]


def test_a_second_turn_through_either_path_sees_the_first(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.post("/v1/chat", json={"session_id": "mixed", "message": "one"}).is_success
    _without_direct_path(monkeypatch)
    assert client.post("/v1/chat", json={"session_id": "mixed", "message": "two"}).is_success
    history = client.get("/v1/sessions/mixed").json()["messages"]
    assert [m["content"] for m in history if m["role"] == "user"] == ["one", "two"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"message": "hi"}', "text/plain"),
        (b'{"message": ""}', "application/json"),
        (b'{"message": "hi", "extra": 1}', "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"", "application/json"),
    ],
)
def test_bodies_the_direct_path_declines_get_the_fastapi_answer(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, content: bytes, content_type: str
) -> None:
    headers = {"content-type": content_type}
    fast = client.post("/v1/chat", content=content, headers=headers)
    _without_direct_path(monkeypatch)
    routed = client.post("/v1/chat", content=content, headers=headers)
    assert _comparable(fast) == _comparable(routed)


def test_healthz_answers_the_same_with_and_without_the_direct_path(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = client.get("/healthz")
    _without_direct_path(monkeypatch)
    routed = client.get("/healthz")
    assert (fast.status_code, fast.content) == (routed.status_code, routed.content)
    assert fast.headers["content-type"] == routed.headers["content-type"]
    assert fast.headers["content-length"] == routed.headers["content-length"]


def test_direct_answers_are_counted_under_their_route(client: TestClient) -> None:
    client.post("/v1/chat", json={"message": "hi"})
    client.get("/healthz")
    metrics = client.get("/metrics").text
    assert 'agent_http_requests_total{method="POST",route="/v1/chat",status="200"} 1.0' in metrics
    assert 'agent_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in metrics


def test_a_valid_turn_takes_the_direct_path_and_an_invalid_one_falls_back(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[str] = []
    serve_chat = direct.ROUTES[("POST", "/v1/chat")]

    async def spy(scope, receive, send, app) -> None:  # type: ignore[no-untyped-def]
        async def fallback(*args) -> None:  # type: ignore[no-untyped-def]
            taken.append("fastapi")
            await app(*args)

        taken.append("direct")
        await serve_chat(scope, receive, send, fallback)

    monkeypatch.setitem(direct.ROUTES, ("POST", "/v1/chat"), spy)
    assert client.post("/v1/chat", json={"message": "hi"}).status_code == 200
    assert taken == ["direct"]
    assert client.post("/v1/chat", json={"message": 5}).status_code == 422
    assert taken == ["direct", "direct", "fastapi"]
