"""The `openai:<model>` provider against a fake that speaks the real protocol over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import httpx
import pytest

from agent_service.providers import ModelError, ModelTimeout, OpenAIModel, RetryPolicy
from tests.integration.conftest import SECRET
from tests.integration.fake_openai import FakeOpenAI, Step, completion, tool_call


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


def test_a_200_that_is_not_json_is_a_502_and_ends_the_stream_with_an_error_event(
    start_service, fake_api: FakeOpenAI, tmp_path: Path
) -> None:
    fake_api.script = [Step(200, raw=b'{"choices": [{"message": {"content": "cut sh')]
    service = _start(start_service, fake_api, tmp_path)
    response = httpx.post(service.url + "/v1/chat", json={"message": "hi"}, timeout=30)
    assert response.status_code == 502, response.text
    assert response.json()["error"] == "model-unavailable"
    assert len(fake_api.received) == 1  # a 200 is never retried: the API may have charged it

    fake_api.script = [Step(200, raw=b"<html>gateway says hello</html>")]
    with httpx.stream(
        "POST", service.url + "/v1/chat/stream", json={"message": "hi"}, timeout=30
    ) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("event: ")]
    assert events[-1] == "event: error"
    assert "Traceback" not in service.output()


def test_a_retry_whose_wait_would_outlast_the_budget_is_not_attempted(
    start_service, fake_api: FakeOpenAI, tmp_path: Path
) -> None:
    # The API asks for 2.5 s; with a 3 s budget the call fails at once with the API's own
    # answer (502) instead of sleeping into the model timeout (504).
    fake_api.script = [Step(503, {"error": {"message": "busy"}}, {"retry-after": "2.5"})]
    service = _start(start_service, fake_api, tmp_path, AGENT_MODEL_TIMEOUT_S="3")
    response = httpx.post(service.url + "/v1/chat", json={"message": "hi"}, timeout=30)
    assert response.status_code == 502, response.text
    assert "503" in response.json()["message"]
    assert len(fake_api.received) == 1


def test_the_number_of_retries_is_a_setting(
    start_service, fake_api: FakeOpenAI, tmp_path: Path
) -> None:
    fake_api.script = [Step(500, {"error": {"message": "boom"}}, {"retry-after": "0"})]
    service = _start(start_service, fake_api, tmp_path, AGENT_MODEL_RETRIES="1")
    response = httpx.post(service.url + "/v1/chat", json={"message": "hi"}, timeout=30)
    assert response.status_code == 502
    assert len(fake_api.received) == 2


def test_a_read_timeout_of_the_api_is_a_model_timeout_not_a_provider_error(
    fake_api: FakeOpenAI,
) -> None:
    fake_api.script = [Step(200, completion("late"), delay_s=5)]
    model = OpenAIModel("fake-model", fake_api.base_url, SECRET, timeout_s=0.5)

    async def call() -> None:
        try:
            await model.complete([{"role": "user", "content": "hi"}], [])
        finally:
            await model.aclose()

    with pytest.raises(ModelTimeout):
        asyncio.run(call())
    assert len(fake_api.received) == 1  # a read timeout is not retried: the API may be working


def test_connect_timeouts_are_retried_within_the_budget() -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, so connects time out.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        policy = RetryPolicy(
            retries=3, first_backoff_s=0.01, connect_timeout_s=0.2, min_attempt_s=0.1
        )
        model = OpenAIModel("m", f"http://127.0.0.1:{port}/v1", SECRET, 10, policy)

        async def call() -> None:
            try:
                await model.complete([{"role": "user", "content": "hi"}], [])
            finally:
                await model.aclose()

        try:
            with pytest.raises(ModelError, match=r"ConnectTimeout \(after 4 attempts\)"):
                asyncio.run(call())
        finally:
            for filler in fillers:
                filler.close()
