"""The HTTP API in-process: the contract, bad input as JSON errors, request ids, streaming."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from agent_service import app as app_module
from agent_service.lifecycle import Lifecycle
from agent_service.store import Context, MemoryStore, StoreUnavailable

Client = Callable[..., TestClient]


def _error(response, status: int, reason: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == reason
    assert body["message"]
    assert "Traceback" not in response.text


def test_healthz_is_200_and_readyz_is_200_once_warm(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "store": "up"}


def test_a_chat_turn_mints_a_session_and_the_next_turn_continues_it(client: TestClient) -> None:
    first = client.post("/v1/chat", json={"message": "hello"})
    assert first.status_code == 200
    session_id = first.json()["session_id"]
    assert first.json()["reply"] == "echo: hello"
    second = client.post("/v1/chat", json={"session_id": session_id, "message": "again"})
    assert second.json()["session_id"] == session_id
    history = client.get(f"/v1/sessions/{session_id}").json()
    assert history["session_id"] == session_id
    assert [(m["role"], m["content"]) for m in history["messages"]] == [
        ("user", "hello"),
        ("assistant", "echo: hello"),
        ("user", "again"),
        ("assistant", "echo: again"),
    ]


def test_deleting_a_session_forgets_it(client: TestClient) -> None:
    client.post("/v1/chat", json={"session_id": "to-forget", "message": "x"})
    assert client.delete("/v1/sessions/to-forget").status_code == 204
    _error(client.get("/v1/sessions/to-forget"), 404, "session-not-found")
    _error(client.delete("/v1/sessions/to-forget"), 404, "session-not-found")


def test_an_unknown_session_is_404(client: TestClient) -> None:
    _error(client.get("/v1/sessions/never-seen"), 404, "session-not-found")


def test_a_body_over_the_limit_is_413(make_client: Client) -> None:
    client = make_client(max_body_bytes=2048)
    _error(client.post("/v1/chat", json={"message": "x" * 5000}), 413, "body-too-large")


def test_a_chunked_body_over_the_limit_is_413(make_client: Client) -> None:
    client = make_client(max_body_bytes=2048)

    def chunks() -> Iterator[bytes]:
        yield b'{"message": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    response = client.post(
        "/v1/chat", content=chunks(), headers={"content-type": "application/json"}
    )
    _error(response, 413, "body-too-large")


def test_a_message_over_the_limit_is_422(make_client: Client) -> None:
    client = make_client(max_message_chars=10)
    _error(client.post("/v1/chat", json={"message": "x" * 11}), 422, "message-too-long")


@pytest.mark.parametrize("session_id", ["a:b", "a*", "has space", "x" * 129, ""])
def test_an_unsafe_session_id_is_422(client: TestClient, session_id: str) -> None:
    response = client.post("/v1/chat", json={"session_id": session_id, "message": "hi"})
    _error(response, 422, "invalid-request")
    assert response.json()["detail"][0]["loc"] == ["body", "session_id"]


@pytest.mark.parametrize("session_id", ["a:b", "a*", "x" * 129])
def test_an_unsafe_session_id_in_the_path_is_422(client: TestClient, session_id: str) -> None:
    _error(client.get(f"/v1/sessions/{session_id}"), 422, "invalid-request")


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"\xff\xfe{", b"[]", b'{"message": 5}', b'{"message": ""}', b'{"msg": "hi"}'],
)
def test_malformed_or_wrong_bodies_are_422(client: TestClient, body: bytes) -> None:
    response = client.post("/v1/chat", content=body, headers={"content-type": "application/json"})
    _error(response, 422, "invalid-request")


def test_a_rejected_input_is_not_echoed_back(client: TestClient) -> None:
    response = client.post("/v1/chat", json={"message": "hi", "api_key": "sk-do-not-reflect"})
    _error(response, 422, "invalid-request")
    assert "sk-do-not-reflect" not in response.text


def test_unknown_paths_and_methods_answer_json(client: TestClient) -> None:
    _error(client.get("/nope"), 404, "not-found")
    _error(client.put("/v1/chat", json={}), 405, "method-not-allowed")


def test_an_unexpected_failure_is_a_500_without_a_trace(
    make_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(MemoryStore):
        async def context(self, session_id: str, limit: int, turn_id: str | None) -> Context:
            raise RuntimeError("secret internals")

    monkeypatch.setattr(app_module, "open_store", lambda url, ttl, **_: Broken(ttl))
    response = make_client().post("/v1/chat", json={"message": "hi"})
    _error(response, 500, "internal")
    assert "secret internals" not in response.text


def test_the_request_id_is_honoured_and_echoed_or_minted(client: TestClient) -> None:
    given = client.post("/v1/chat", json={"message": "hi"}, headers={"x-request-id": "req-123"})
    assert given.headers["x-request-id"] == "req-123"
    assert given.json()["request_id"] == "req-123"
    minted = client.get("/healthz")
    assert len(minted.headers["x-request-id"]) == 32
    unsafe = client.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


def test_each_request_logs_one_line_with_id_session_status_and_latency(
    make_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(echo_latency_ms=50)  # the turn takes at least the model's 50 ms
    with caplog.at_level(logging.INFO, logger="agent_service.request"):
        client.post(
            "/v1/chat",
            json={"session_id": "logged", "message": "hi"},
            headers={"x-request-id": "r-1"},
        )
    (record,) = [r for r in caplog.records if r.name == "agent_service.request"]
    assert record.request_id == "r-1"  # type: ignore[attr-defined]
    assert record.session_id == "logged"  # type: ignore[attr-defined]
    assert record.status == 200  # type: ignore[attr-defined]
    assert record.duration_ms >= 50  # type: ignore[attr-defined]


def test_readyz_and_chat_are_503_while_starting(
    make_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Unreachable(MemoryStore):
        async def ping(self) -> None:
            raise StoreUnavailable("ConnectionError")

    monkeypatch.setattr(app_module, "open_store", lambda url, ttl, **_: Unreachable(ttl))
    client = make_client(wait_ready=False)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {
        "status": "not-ready",
        "reason": "starting",
        "store": "up",
    }
    response = client.post("/v1/chat", json={"message": "hi"})
    _error(response, 503, "starting")
    assert response.headers["retry-after"] == "1"


def test_readyz_is_503_draining_while_chat_is_still_served(make_client: Client) -> None:
    lifecycle = Lifecycle()
    client = make_client(lifecycle=lifecycle)
    lifecycle.begin_drain()
    assert client.get("/readyz").json()["reason"] == "draining"
    assert client.post("/v1/chat", json={"message": "hi"}).status_code == 200


def test_a_turn_over_the_request_timeout_is_504_and_stores_nothing(make_client: Client) -> None:
    client = make_client(
        echo_latency_ms=300, request_timeout_s=0.5, model_timeout_s=0.4, max_steps=5
    )
    response = client.post("/v1/chat", json={"session_id": "slow", "message": "loop"})
    _error(response, 504, "turn-timeout")
    _error(client.get("/v1/sessions/slow"), 404, "session-not-found")


def test_a_model_call_over_its_timeout_is_504(make_client: Client) -> None:
    client = make_client(echo_latency_ms=500, model_timeout_s=0.1)
    _error(client.post("/v1/chat", json={"message": "hi"}), 504, "model-timeout")


def test_a_turn_streams_tool_calls_then_the_reply_as_server_sent_events(
    client: TestClient,
) -> None:
    with client.stream(
        "POST", "/v1/chat/stream", json={"session_id": "streamed", "message": "calc 1+1"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1][6:]))
        for block in text.strip().split("\n\n")
    ]
    names = [name for name, _ in events]
    assert names == ["session", "tool_call", "tool_result", "delta", "delta", "reply"]
    # The echo model streams its reply word by word; the deltas add up to the reply.
    assert "".join(data["content"] for name, data in events if name == "delta") == "calc: 2"
    assert events[-1][1]["content"] == "calc: 2"
    assert events[-1][1]["usage"]["output_tokens"] > 0
    assert len(client.get("/v1/sessions/streamed").json()["messages"]) == 2


def test_metrics_expose_requests_latency_in_flight_model_calls_and_steps(
    client: TestClient,
) -> None:
    client.post("/v1/chat", json={"message": "calc 1+2"})
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
    }
    chat = (("method", "POST"), ("route", "/v1/chat"))
    assert samples[("agent_http_requests_total", (*chat, ("status", "200")))] == 1
    assert samples[("agent_http_request_duration_seconds_count", chat)] == 1
    assert samples[("agent_http_requests_in_flight", ())] == 1  # the scrape itself
    model = (("outcome", "ok"), ("provider", "echo"))
    assert samples[("agent_model_call_duration_seconds_count", model)] == 2
    assert samples[("agent_turn_steps_sum", ())] == 2
