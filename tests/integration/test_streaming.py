"""Token streaming from an OpenAI-compatible API: its server-sent events over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time

from agent_service.providers import ModelReply, OpenAIModel, Usage
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
