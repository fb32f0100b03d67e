"""Turns in-process: Idempotency-Key, bounded and paged history, turn outcomes, readiness."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pytest
from fastapi.testclient import TestClient

from agent_service import app as app_module
from agent_service.store import MemoryStore, Message, StoreHealth, StoreUnavailable

Client = Callable[..., TestClient]


def _events(text: str) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    return [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1][6:]))
        for block in text.strip().split("\n\n")
    ]


def test_a_repeated_idempotency_key_returns_the_stored_answer_and_stores_nothing_new(
    client: TestClient,
) -> None:
    body = {"session_id": "idem", "message": "time"}
    first = client.post("/v1/chat", json=body, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/chat", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    strip = lambda r: {k: v for k, v in r.json().items() if k != "request_id"}  # noqa: E731
    assert strip(again) == strip(first)
    assert again.json()["request_id"] != first.json()["request_id"]
    assert len(client.get("/v1/sessions/idem").json()["messages"]) == 2
    other = client.post("/v1/chat", json=body, headers={"Idempotency-Key": "k-2"})
    assert "idempotent-replayed" not in other.headers
    assert len(client.get("/v1/sessions/idem").json()["messages"]) == 4


def test_an_idempotency_key_reused_for_another_message_is_422(client: TestClient) -> None:
    headers = {"Idempotency-Key": "k-1"}
    client.post("/v1/chat", json={"session_id": "reuse", "message": "one"}, headers=headers)
    response = client.post(
        "/v1/chat", json={"session_id": "reuse", "message": "two"}, headers=headers
    )
    assert response.status_code == 422
    assert response.json()["error"] == "idempotency-key-reused"
    assert len(client.get("/v1/sessions/reuse").json()["messages"]) == 2


@pytest.mark.parametrize("key", [b"", b"has space", b"x" * 256, "caf\u00e9".encode()])
def test_an_unsafe_idempotency_key_is_422(client: TestClient, key: bytes) -> None:
    response = client.post(
        "/v1/chat",
        json={"session_id": "bad-key", "message": "hi"},
        headers={"Idempotency-Key": key},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid-idempotency-key"
    assert client.get("/v1/sessions/bad-key").status_code == 404


def test_a_streamed_repeat_of_a_key_replays_the_stored_reply(client: TestClient) -> None:
    body = {"session_id": "idem-stream", "message": "calc 2*21"}
    headers = {"Idempotency-Key": "s-1"}
    first = client.post("/v1/chat/stream", json=body, headers=headers)
    again = client.post("/v1/chat/stream", json=body, headers=headers)
    assert [n for n, _ in _events(first.text)] == [
        "session",
        "tool_call",
        "tool_result",
        "delta",
        "delta",
        "reply",
    ]
    assert _events(again.text) == [
        ("session", {"session_id": "idem-stream"}),
        ("reply", _events(first.text)[-1][1]),
    ]
    whole = client.post("/v1/chat", json=body, headers=headers)
    assert whole.json()["tool_calls"] == [
        {"name": "calculator", "arguments": {"expression": "2*21"}, "result": "42"}
    ]
    assert len(client.get("/v1/sessions/idem-stream").json()["messages"]) == 2
    metrics = client.get("/metrics").text
    assert 'agent_turns_total{mode="stream",outcome="ok"} 1.0' in metrics
    assert 'agent_turns_total{mode="stream",outcome="replayed"} 1.0' in metrics
    assert 'agent_turns_total{mode="whole",outcome="replayed"} 1.0' in metrics


def test_history_is_trimmed_to_its_maximum_and_read_in_pages(make_client: Client) -> None:
    client = make_client(max_history_messages=6, context_max_messages=4)
    for i in range(5):
        client.post("/v1/chat", json={"session_id": "long", "message": f"m{i}"})
    everything = client.get("/v1/sessions/long").json()
    assert [m["content"] for m in everything["messages"]] == [
        "m2", "echo: m2", "m3", "echo: m3", "m4", "echo: m4",
    ]  # fmt: skip
    assert [m["seq"] for m in everything["messages"]] == [4, 5, 6, 7, 8, 9]
    assert "next_before" not in everything  # nothing older is stored

    newest = client.get("/v1/sessions/long", params={"limit": 4}).json()
    assert [m["seq"] for m in newest["messages"]] == [6, 7, 8, 9]
    assert newest["next_before"] == 6
    older = client.get("/v1/sessions/long", params={"limit": 4, "before": 6}).json()
    assert [m["seq"] for m in older["messages"]] == [4, 5]
    assert "next_before" not in older


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "before=-1", "limit=x"])
def test_bad_page_parameters_are_422(client: TestClient, query: str) -> None:
    client.post("/v1/chat", json={"session_id": "paged", "message": "hi"})
    response = client.get(f"/v1/sessions/paged?{query}")
    assert response.status_code == 422
    assert response.json()["error"] == "invalid-request"


def test_an_odd_or_too_small_history_maximum_is_a_configuration_error() -> None:
    from pydantic import ValidationError

    from agent_service.config import Settings

    with pytest.raises(ValidationError):
        Settings(max_history_messages=7)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="AGENT_CONTEXT_MAX_MESSAGES"):
        Settings(max_history_messages=10, context_max_messages=20)  # type: ignore[call-arg]


class _FailingWrites(MemoryStore):
    async def append(
        self, session_id: str, turn_id: str, record: str, messages: Sequence[Message]
    ) -> str | None:
        self.health.saw(False)
        raise StoreUnavailable("timeout")


def test_a_streamed_turn_whose_write_fails_ends_with_an_error_and_is_not_counted_ok(
    make_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "open_store", lambda url, ttl, **_: _FailingWrites(ttl))
    client = make_client()
    response = client.post("/v1/chat/stream", json={"session_id": "s", "message": "hi"})
    assert _events(response.text)[-1] == (
        "error",
        {
            "error": "store-unavailable",
            "message": "the session store is unavailable; retry shortly",
        },
    )
    whole = client.post("/v1/chat", json={"session_id": "s", "message": "hi"})
    assert whole.status_code == 503
    assert whole.headers["retry-after"] == "1"
    metrics = client.get("/metrics").text
    assert 'agent_turns_total{mode="stream",outcome="store-unavailable"} 1.0' in metrics
    assert 'agent_turns_total{mode="whole",outcome="store-unavailable"} 1.0' in metrics
    assert 'agent_turns_total{mode="stream",outcome="ok"}' not in metrics
    assert 'agent_store_errors_total{operation="write"} 2.0' in metrics


class _Switchable(MemoryStore):
    """A store whose every call fails while `down` is set."""

    down = False

    async def ping(self) -> None:
        if self.down:
            self.health.saw(False)
            raise StoreUnavailable("ConnectionError")
        self.health.saw(True)


@pytest.mark.parametrize(
    ("mode", "status", "body"),
    [
        ("warmup", 200, {"status": "ready", "store": "down"}),
        ("always", 503, {"status": "not-ready", "reason": "store-unavailable", "store": "down"}),
    ],
)
def test_a_store_outage_after_warm_up_fails_readiness_only_when_asked_to(
    make_client: Client, monkeypatch: pytest.MonkeyPatch, mode: str, status: int, body: dict
) -> None:  # type: ignore[type-arg]
    store = _Switchable(600)

    def open_store(url: str, ttl: int, health: StoreHealth, **_: object) -> _Switchable:
        store.health = health
        return store

    monkeypatch.setattr(app_module, "open_store", open_store)
    client = make_client(readiness_store=mode)
    store.health.saw(False)  # as a failed request or the store watcher would
    _Switchable.down = True
    try:
        response = client.get("/readyz")
        assert (response.status_code, response.json()) == (status, body)
        assert "agent_store_up 0.0" in client.get("/metrics").text
    finally:
        _Switchable.down = False
    store.health.saw(True)
    assert client.get("/readyz").json() == {"status": "ready", "store": "up"}
    assert "agent_store_up 1.0" in client.get("/metrics").text
