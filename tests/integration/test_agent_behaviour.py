"""The agent's configured prompt, tools and context window reach a model API over real HTTP.

A real `agent-service` process, configured only through its environment, against the fake
OpenAI-compatible API, which records every request body it received.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from tests.integration.conftest import SECRET, Service, run_service_once
from tests.integration.fake_openai import FakeOpenAI, Step, completion, tool_call

# A prompt as an operator writes one: internal instructions that must never reach a log.
PROMPT = "You are Acme's support agent.\nInternal: refunds over 100 EUR go to tier 2.\n"


def _start(start_service, fake: FakeOpenAI, tmp_path: Path, **overrides: str) -> Service:  # type: ignore[no-untyped-def]
    service = start_service(
        AGENT_MODEL="openai:fake-model", AGENT_MODEL_BASE_URL=fake.base_url, **overrides
    )
    service.wait_ready()
    return service


def _chat(service: Service, message: str) -> dict:  # type: ignore[type-arg]
    response = httpx.post(
        service.url + "/v1/chat", json={"session_id": "s", "message": message}, timeout=30
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _startup_config(service: Service) -> dict:  # type: ignore[type-arg]
    for line in service.output().splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        if "config" in record:
            return dict(record["config"])
    raise AssertionError(f"no startup line:\n{service.output()}")


def test_the_configured_prompt_tools_and_window_are_what_the_model_api_receives(
    start_service, fake_api: FakeOpenAI, tmp_path: Path
) -> None:
    prompt_file = tmp_path / "system-prompt"
    prompt_file.write_text(PROMPT)
    fake_api.script = [Step(200, completion(f"answer {i}")) for i in range(3)]
    service = _start(
        start_service,
        fake_api,
        tmp_path,
        AGENT_SYSTEM_PROMPT_FILE=str(prompt_file),
        AGENT_TOOLS="word_count,calculator",
        AGENT_CONTEXT_MAX_MESSAGES="4",
        # Turn 1 and its answer fit; adding turn 0's two messages would not.
        AGENT_CONTEXT_MAX_TOKENS="14",
    )
    for i in range(3):
        _chat(service, f"turn {i}")

    third = fake_api.received[2]["body"]
    assert third["messages"] == [
        {"role": "system", "content": PROMPT.strip()},
        {"role": "user", "content": "turn 1"},
        {"role": "assistant", "content": "answer 1"},
        {"role": "user", "content": "turn 2"},
    ]
    assert [t["function"]["name"] for t in third["tools"]] == ["word_count", "calculator"]
    assert len(httpx.get(service.url + "/v1/sessions/s").json()["messages"]) == 6

    # The prompt is in the startup line only as facts, and nowhere in the output as text.
    digest = hashlib.sha256(PROMPT.strip().encode()).hexdigest()[:12]
    config = _startup_config(service)
    assert config["system_prompt"] == {
        "chars": len(PROMPT.strip()),
        "sha256": digest,
        "default": False,
    }
    assert config["tools"] == ["word_count", "calculator"]
    assert "tier 2" not in service.output()


def test_a_call_to_a_disabled_tool_is_answered_as_an_unknown_tool(
    start_service, fake_api: FakeOpenAI, tmp_path: Path
) -> None:
    fake_api.script = [
        Step(200, completion(tool_calls=[tool_call("clock", "{}")])),
        Step(200, completion("I cannot tell the time.")),
    ]
    service = _start(start_service, fake_api, tmp_path, AGENT_TOOLS="calculator")
    body = _chat(service, "what time is it?")
    assert body["tool_calls"] == [
        {"name": "clock", "arguments": {}, "result": "error: unknown tool 'clock'"}
    ]
    assert fake_api.received[1]["body"]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "error: unknown tool 'clock'",
    }


def test_with_no_tools_the_request_offers_none(
    start_service, fake_api: FakeOpenAI, tmp_path: Path
) -> None:
    fake_api.script = [Step(200, completion("hello"))]
    service = _start(start_service, fake_api, tmp_path, AGENT_TOOLS="none")
    _chat(service, "hi")
    assert "tools" not in fake_api.received[0]["body"]
    default = fake_api.received[0]["body"]["messages"][0]
    assert default == {
        "role": "system",
        "content": "You are a helpful assistant. Use the tools when they help.",
    }


def test_bad_agent_settings_exit_2_naming_each_variable_and_never_the_prompt(
    tmp_path: Path,
) -> None:
    too_large = tmp_path / "too-large"
    too_large.write_text(SECRET + "x" * 131_072)
    result = run_service_once(
        tmp_path,
        AGENT_TOOLS="clock,shell",
        AGENT_SYSTEM_PROMPT_FILE=str(too_large),
        AGENT_CONTEXT_MAX_TOKENS="0",
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any("AGENT_TOOLS: unknown tool 'shell'" in line for line in lines), result.stderr
    assert any("calculator, word_count, clock" in line for line in lines)
    assert any("AGENT_SYSTEM_PROMPT_FILE: the file is too large" in line for line in lines)
    assert any("AGENT_CONTEXT_MAX_TOKENS: " in line for line in lines)
    assert SECRET not in result.stdout + result.stderr

    result = run_service_once(
        tmp_path, AGENT_SYSTEM_PROMPT=SECRET, AGENT_SYSTEM_PROMPT_FILE=str(tmp_path / "missing")
    )
    assert result.returncode == 2
    assert "AGENT_SYSTEM_PROMPT_FILE: " in result.stderr
    assert SECRET not in result.stdout + result.stderr
