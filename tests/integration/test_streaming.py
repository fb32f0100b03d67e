"""Token streaming from an OpenAI-compatible API: its server-sent events over real HTTP, read by
the provider alone and through a service process to its client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from agent_service.providers import ModelReply, OpenAIModel, Usage
from tests.integration.conftest import Service, wait_until
from tests.integration.fake_openai import FakeOpenAI, Step, completion, tool_call


def _model(fake: FakeOpenAI, timeout_s: float = 10.0) -> OpenAIModel:
    return OpenAIModel("fake-model", fake.base_url, "sk-test", timeout_s)


async def _collect(model: OpenAIModel, text: str = "hi") -> list[tuple[float, str | ModelReply]]:
    parts: list[tuple[float, str | ModelReply]] = []
    try:
        async for part in model.stream([{"role": "user", "content": text}], []):
            parts.append((time.monotonic(), part))
    finally:
        await model.aclose()
    return parts


def test_text_arrives_in_deltas_before_the_model_has_finished(fake_api: FakeOpenAI) -> None:
    fake_api.script = [
        Step(200, completion("one two three four", usage=(23, 4)), chunk_delay_s=0.2)
    ]
    parts = asyncio.run(_collect(_model(fake_api)))
    deltas = [(t, p) for t, p in parts if isinstance(p, str)]
    assert [p for _, p in deltas] == ["one ", "two ", "three ", "four"]
    reply = parts[-1][1]
    assert isinstance(reply, ModelReply)
    assert reply.content == "one two three four"
    assert reply.usage == Usage(23, 4)
    assert reply.finish_reason == "stop"
    assert reply.model == "fake-model"
    # The first delta was in our hands before the API sent its last event.
    (stream,) = fake_api.streams
    assert deltas[0][0] < stream.sent_at[-1]
    body = fake_api.received[0]["body"]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_streamed_tool_calls_are_put_back_together(fake_api: FakeOpenAI) -> None:
    calls = [
        tool_call("calculator", '{"expression": "6*7"}', "call_a"),
        tool_call("word_count", '{"text": "a b c"}', "call_b"),
    ]
    fake_api.script = [Step(200, completion(tool_calls=calls, usage=(40, 12)))]
    parts = asyncio.run(_collect(_model(fake_api)))
    reply = parts[-1][1]
    assert isinstance(reply, ModelReply)
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [
        ("call_a", "calculator", {"expression": "6*7"}),
        ("call_b", "word_count", {"text": "a b c"}),
    ]
    assert reply.finish_reason == "tool_calls"
    assert reply.usage == Usage(40, 12)


def test_a_whole_completion_reports_the_providers_usage(fake_api: FakeOpenAI) -> None:
    fake_api.script = [Step(200, completion("hello", usage=(101, 9)))]

    async def once() -> ModelReply:
        model = _model(fake_api)
        try:
            return await model.complete([{"role": "user", "content": "hi"}], [])
        finally:
            await model.aclose()

    reply = asyncio.run(once())
    assert reply.usage == Usage(101, 9)
    assert reply.usage.total == 110


def test_closing_the_stream_midway_stops_the_upstream_call(fake_api: FakeOpenAI) -> None:
    words = " ".join(f"w{i}" for i in range(50))
    fake_api.script = [Step(200, completion(words), chunk_delay_s=0.1)]

    async def take_two() -> list[str]:
        model = _model(fake_api)
        got: list[str] = []
        parts = model.stream([{"role": "user", "content": "hi"}], [])
        async with contextlib.aclosing(parts):
            async for part in parts:
                assert isinstance(part, str)
                got.append(part)
                if len(got) == 2:
                    break
        await model.aclose()
        return got

    assert asyncio.run(take_two()) == ["w0 ", "w1 "]
    (stream,) = fake_api.streams
    assert stream.disconnected.wait(10), "the API kept streaming to nobody"
    assert not stream.finished
    assert len(stream.sent_at) < 50


def _service(start_service, fake: FakeOpenAI, **overrides: str) -> Service:
    service = start_service(
        AGENT_MODEL="openai:fake-model", AGENT_MODEL_BASE_URL=fake.base_url, **overrides
    )
    service.wait_ready()
    return service


def _events(lines: Iterator[str]) -> Iterator[tuple[float, str, dict[str, Any]]]:
    """Server-sent events as they arrive: (time received, event, data)."""
    event = ""
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield time.monotonic(), event, json.loads(line.removeprefix("data: "))


def test_the_service_streams_deltas_before_the_model_has_finished_and_usage_in_its_reply(
    start_service, fake_api: FakeOpenAI
) -> None:
    fake_api.script = [
        Step(200, completion("one two three four", usage=(23, 4)), chunk_delay_s=0.2)
    ]
    service = _service(start_service, fake_api)
    with httpx.stream(
        "POST", service.url + "/v1/chat/stream", json={"message": "count"}, timeout=30
    ) as response:
        assert response.status_code == 200
        events = list(_events(response.iter_lines()))
    names = [name for _, name, _ in events]
    assert names == ["session", "delta", "delta", "delta", "delta", "reply"]
    deltas = [(t, data) for t, name, data in events if name == "delta"]
    assert "".join(d["content"] for _, d in deltas) == "one two three four"
    assert all(d["step"] == 1 for _, d in deltas)
    # The first delta reached this client before the model API sent its last event.
    (upstream,) = fake_api.streams
    assert deltas[0][0] < upstream.sent_at[-1]
    assert upstream.finished
    reply = events[-1][2]
    assert reply["content"] == "one two three four"
    assert reply["usage"] == {"input_tokens": 23, "output_tokens": 4}
    assert fake_api.received[0]["body"]["stream"] is True


def test_a_client_that_leaves_mid_stream_stops_the_upstream_call(
    start_service, fake_api: FakeOpenAI
) -> None:
    words = " ".join(f"w{i}" for i in range(50))
    fake_api.script = [Step(200, completion(words), chunk_delay_s=0.1)]
    service = _service(start_service, fake_api)
    got: list[str] = []
    with httpx.stream(
        "POST",
        service.url + "/v1/chat/stream",
        json={"session_id": "left", "message": "talk"},
        timeout=30,
    ) as response:
        for _, name, data in _events(response.iter_lines()):
            if name == "delta":
                got.append(data["content"])
            if len(got) == 2:
                break  # leaving the block closes the connection
    assert got == ["w0 ", "w1 "]
    (upstream,) = fake_api.streams
    assert upstream.disconnected.wait(10), "the model API kept streaming to nobody"
    assert not upstream.finished
    assert len(upstream.sent_at) < 50
    # The turn ended as `client-gone` and was not stored.
    wait_until(
        lambda: (
            'agent_turns_total{mode="stream",outcome="client-gone"} 1.0'
            in httpx.get(service.url + "/metrics").text
        ),
        10,
        "the turn to be counted as client-gone",
        service,
    )
    assert httpx.get(service.url + "/v1/sessions/left").status_code == 404


def test_the_echo_model_streams_word_by_word_through_the_service(start_service) -> None:
    service = start_service()
    service.wait_ready()
    with httpx.stream(
        "POST", service.url + "/v1/chat/stream", json={"message": "hello big world"}, timeout=30
    ) as response:
        events = list(_events(response.iter_lines()))
    deltas = [data["content"] for _, name, data in events if name == "delta"]
    assert deltas == ["echo: ", "hello ", "big ", "world"]
    reply = events[-1][2]
    assert events[-1][1] == "reply"
    assert reply["content"] == "echo: hello big world"
    assert reply["usage"]["output_tokens"] == 4
    assert reply["usage"]["input_tokens"] > 3
