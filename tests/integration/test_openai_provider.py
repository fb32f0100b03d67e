"""The `openai:<model>` provider against a fake that speaks the real protocol over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.conftest import SECRET
from tests.integration.fake_openai import FakeOpenAI, Step, completion, tool_call


@pytest.fixture
def fake_api() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(free_port())
    fake.start()
    yield fake
    fake.stop()


def _start(start_service, fake: FakeOpenAI, tmp_path: Path, **overrides: str):  # type: ignore[no-untyped-def]
    key_file = tmp_path / "api-key"
    key_file.write_text(SECRET + "\n")
    service = start_service(
        AGENT_MODEL="openai:fake-model",
        AGENT_MODEL_BASE_URL=fake.base_url,
        AGENT_MODEL_API_KEY="",
        AGENT_MODEL_API_KEY_FILE=str(key_file),
        **overrides,
    )
    service.wait_ready()
    return service


def test_a_turn_retries_a_429_runs_the_tool_and_answers(
    start_service, fake_api: FakeOpenAI, tmp_path: Path
) -> None:
    fake_api.script = [
        Step(429, {"error": {"message": "slow down"}}, {"retry-after": "0"}),
        Step(200, completion(tool_calls=[tool_call("calculator", '{"expression": "6*7"}')])),
        Step(200, completion("The answer is 42.")),
    ]
    service = _start(start_service, fake_api, tmp_path)
    response = httpx.post(service.url + "/v1/chat", json={"message": "what is 6*7?"}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reply"] == "The answer is 42."
    assert body["steps"] == 2
    assert body["tool_calls"][0]["result"] == "42"

    assert len(fake_api.received) == 3
    assert {r["authorization"] for r in fake_api.received} == {f"Bearer {SECRET}"}
    first = fake_api.received[0]["body"]
    assert first["model"] == "fake-model"
    assert {t["function"]["name"] for t in first["tools"]} >= {"calculator", "clock"}
    last_messages = fake_api.received[2]["body"]["messages"]
    assert last_messages[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "42"}
    assert SECRET not in service.output()


def test_a_provider_that_keeps_failing_is_a_502(
    start_service, fake_api: FakeOpenAI, tmp_path: Path
) -> None:
    fake_api.script = [Step(500, {"error": {"message": "boom"}}, {"retry-after": "0"})]
    service = _start(start_service, fake_api, tmp_path)
    response = httpx.post(service.url + "/v1/chat", json={"message": "hi"}, timeout=30)
    assert response.status_code == 502
    assert response.json()["error"] == "model-unavailable"
    assert len(fake_api.received) == 4  # the first try and three retries


def test_a_provider_slower_than_the_model_timeout_is_a_504(
    start_service, fake_api: FakeOpenAI, tmp_path: Path
) -> None:
    fake_api.script = [Step(200, completion("late"), delay_s=3)]
    service = _start(start_service, fake_api, tmp_path, AGENT_MODEL_TIMEOUT_S="0.5")
    response = httpx.post(service.url + "/v1/chat", json={"session_id": "s1", "message": "hi"})
    assert response.status_code == 504
    assert response.json()["error"] == "model-timeout"
    assert httpx.get(service.url + "/v1/sessions/s1").status_code == 404
