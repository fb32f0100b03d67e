"""Clients in the app: API keys on every /v1 route, session owners, usage, budgets, cost."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from agent_service.app import create_app
from agent_service.config import Settings
from agent_service.deps import authenticate
from agent_service.routes import chat, sessions

Client = Callable[..., TestClient]
ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef00"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(f"alice:{ALICE}\nbob:{BOB}\n")
    return path


def test_every_v1_route_depends_on_authentication() -> None:
    documented = {p for p in create_app(Settings()).openapi()["paths"] if p.startswith("/v1")}
    routes = [
        r for module in (chat, sessions) for r in module.router.routes if isinstance(r, APIRoute)
    ]
    assert {r.path for r in routes} == documented
    for route in routes:
        assert authenticate in [d.call for d in route.dependant.dependencies], route.path


def test_no_key_or_a_wrong_key_is_401_with_a_bearer_challenge(
    make_client: Client, keys_file: Path
) -> None:
    client = make_client(api_keys_file=keys_file)
    for headers in ({}, _auth("not-a-key-0123456789"), {"Authorization": f"Basic {ALICE}"}):
        for method, path in (("POST", "/v1/chat"), ("POST", "/v1/chat/stream"),
                             ("GET", "/v1/sessions/x"), ("DELETE", "/v1/sessions/x")):  # fmt: skip
            response = client.request(method, path, json={"message": "hi"}, headers=headers)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
    # Probes and the scrape need no key.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200
    assert "agent_auth_failures_total 12.0" in client.get("/metrics").text


def test_a_session_belongs_to_the_client_that_created_it(
    make_client: Client, keys_file: Path
) -> None:
    client = make_client(api_keys_file=keys_file)
    first = client.post("/v1/chat", json={"message": "hello"}, headers=_auth(ALICE))
    assert first.status_code == 200, first.text
    session = first.json()["session_id"]
    again = {"session_id": session, "message": "again"}
    assert client.post("/v1/chat", json=again, headers=_auth(ALICE)).status_code == 200
    for response in (
        client.post("/v1/chat", json=again, headers=_auth(BOB)),
        client.post("/v1/chat/stream", json=again, headers=_auth(BOB)),
        client.get(f"/v1/sessions/{session}", headers=_auth(BOB)),
        client.delete(f"/v1/sessions/{session}", headers=_auth(BOB)),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "session-not-found"
    history = client.get(f"/v1/sessions/{session}", headers=_auth(ALICE)).json()
    assert [m["content"] for m in history["messages"]] == [
        "hello", "echo: hello", "again", "echo: again"
    ]  # fmt: skip
    assert client.delete(f"/v1/sessions/{session}", headers=_auth(ALICE)).status_code == 204


def test_every_turn_reports_its_usage_and_counts_it_by_client_and_model(
    make_client: Client, keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(api_keys_file=keys_file)
    with caplog.at_level(logging.INFO, logger="agent_service.request"):
        body = client.post("/v1/chat", json={"message": "one two"}, headers=_auth(ALICE)).json()
    usage = body["usage"]
    assert usage["output_tokens"] == 3  # "echo: one two"
    assert usage["input_tokens"] > 2
    assert "cost_usd" not in usage  # no price configured
    history = client.get(f"/v1/sessions/{body['session_id']}", headers=_auth(ALICE)).json()
    assert history["messages"][1]["usage"] == usage
    text = client.get("/metrics").text
    assert 'agent_tokens_total{client="alice",direction="output",model="echo"} 3.0' in text
    records = [r for r in caplog.records if getattr(r, "path", None) == "/v1/chat"]
    assert records[0].client == "alice"  # type: ignore[attr-defined]
    assert ALICE not in caplog.text


def test_a_price_table_gives_each_turn_a_cost(make_client: Client) -> None:
    client = make_client(model_prices={"echo": {"input": 1_000_000, "output": 2_000_000}})
    usage = client.post("/v1/chat", json={"message": "hi"}).json()["usage"]
    assert usage["cost_usd"] == usage["input_tokens"] * 1 + usage["output_tokens"] * 2
    assert 'agent_cost_usd_total{client="-",model="echo"}' in client.get("/metrics").text


def test_a_spent_session_budget_is_429_with_retry_after(make_client: Client) -> None:
    # Each "hi" turn here uses the same tokens; reserve exactly that, allow two turns.
    probe = make_client().post("/v1/chat", json={"session_id": "p", "message": "hi"}).json()
    per_turn = probe["usage"]["input_tokens"] + probe["usage"]["output_tokens"]
    client = make_client(
        budget_session_tokens=2 * per_turn + per_turn // 2, budget_turn_tokens=per_turn
    )
    for _ in range(2):  # the second turn's input is larger (the history): 2.5 turns fit no 3rd
        assert client.post("/v1/chat", json={"session_id": "t", "message": "hi"}).status_code == 200
    refused = client.post("/v1/chat", json={"session_id": "t", "message": "hi"})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "budget-exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    streamed = client.post("/v1/chat/stream", json={"session_id": "t", "message": "hi"})
    assert streamed.status_code == 429  # refused before the stream starts
    assert 'agent_budget_refusals_total{scope="session"} 2.0' in client.get("/metrics").text


def test_budget_settings_that_could_never_run_a_turn_are_refused() -> None:
    from agent_service.config import ConfigError, load_settings

    with pytest.MonkeyPatch.context() as env:
        env.setenv("AGENT_BUDGET_SESSION_TOKENS", "100")
        env.setenv("AGENT_BUDGET_TURN_TOKENS", "101")
        with pytest.raises(ConfigError) as err:
            load_settings()
    assert "AGENT_BUDGET_TURN_TOKENS: must not exceed AGENT_BUDGET_SESSION_TOKENS" in str(err.value)


def test_streamed_usage_matches_the_whole_turns(make_client: Client) -> None:
    client = make_client()
    whole = client.post("/v1/chat", json={"session_id": "w", "message": "a b c"}).json()
    text = client.post("/v1/chat/stream", json={"session_id": "s", "message": "a b c"}).text
    reply = json.loads(text.strip().split("\n\n")[-1].split("\n")[1][6:])
    assert reply["usage"] == whole["usage"]


@pytest.mark.parametrize("session_budget", [None, 1_000_000])
def test_a_sessions_history_reports_the_totals_of_all_its_turns(
    make_client: Client, session_budget: int | None
) -> None:
    client = make_client(
        budget_session_tokens=session_budget, max_history_messages=2, context_max_messages=2
    )
    turns = [
        client.post("/v1/chat", json={"session_id": "t", "message": m}).json()["usage"]
        for m in ("one", "one two", "calc 6*7")
    ]
    history = client.get("/v1/sessions/t").json()
    assert len(history["messages"]) == 2  # the first two turns were trimmed; not their tokens
    assert history["usage"] == {
        "input_tokens": sum(u["input_tokens"] for u in turns),
        "output_tokens": sum(u["output_tokens"] for u in turns),
    }
    assert client.delete("/v1/sessions/t").status_code == 204
    client.post("/v1/chat", json={"session_id": "t", "message": "again"})
    again = client.get("/v1/sessions/t").json()
    assert again["usage"] == again["messages"][1]["usage"]  # a new session under the old id
