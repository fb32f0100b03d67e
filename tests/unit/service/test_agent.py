"""The agent loop: tools, the step cap and the per-call timeout, with the embedded echo model."""

from __future__ import annotations

import asyncio

import pytest

from agent_service.agent import SYSTEM_PROMPT, Agent, ModelTimeout, TurnUsage
from agent_service.metrics import Metrics
from agent_service.providers import EchoModel
from agent_service.tools import BUILTIN_TOOLS


def _agent(max_steps: int = 8, latency_s: float = 0.0, timeout_s: float = 5.0) -> Agent:
    return Agent(EchoModel(latency_s), BUILTIN_TOOLS, max_steps, timeout_s, Metrics())


def test_a_plain_message_is_echoed_in_one_step() -> None:
    result = asyncio.run(_agent().run([], "hello"))
    assert (result.reply, result.steps, result.stop_reason) == ("echo: hello", 1, "complete")


def test_a_tool_call_takes_two_steps_and_is_reported() -> None:
    result = asyncio.run(_agent().run([], "calc 6*7"))
    assert result.reply == "calc: 42"
    assert result.steps == 2
    assert result.tool_calls == [
        {"name": "calculator", "arguments": {"expression": "6*7"}, "result": "42"}
    ]


def test_the_step_cap_ends_a_turn_that_never_finishes() -> None:
    result = asyncio.run(_agent(max_steps=3).run([], "loop"))
    assert result.steps == 3
    assert result.stop_reason == "max_steps"
    assert len(result.tool_calls) == 3


def test_a_slow_model_call_times_out() -> None:
    with pytest.raises(ModelTimeout):
        asyncio.run(_agent(latency_s=0.5, timeout_s=0.05).run([], "hello"))


def test_the_history_reaches_the_model_before_the_new_message() -> None:
    seen: list[list[dict[str, object]]] = []

    class Recording(EchoModel):
        async def complete(self, messages, tools):  # type: ignore[no-untyped-def]
            seen.append(list(messages))
            return await super().complete(messages, tools)

    agent = Agent(Recording(), BUILTIN_TOOLS, 8, 5.0, Metrics())
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "echo: a"}]
    asyncio.run(agent.run(history, "b"))
    assert [m["content"] for m in seen[0][1:]] == ["a", "echo: a", "b"]


def test_a_cancelled_model_call_is_counted_as_cancelled_not_ok() -> None:
    metrics = Metrics()
    agent = Agent(EchoModel(latency_s=30), BUILTIN_TOOLS, 8, 60.0, metrics)

    async def cancel_mid_call() -> None:
        turn = asyncio.create_task(agent.run([], "hello"))
        await asyncio.sleep(0)  # let the turn start its model call
        turn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await turn

    asyncio.run(cancel_mid_call())
    count = "agent_model_call_duration_seconds_count"
    sample = metrics.registry.get_sample_value
    assert sample(count, {"provider": "echo", "outcome": "cancelled"}) == 1
    assert sample(count, {"provider": "echo", "outcome": "ok"}) is None


def test_the_echo_model_counts_words_as_tokens_deterministically() -> None:
    result = asyncio.run(_agent().run([{"role": "user", "content": "a b"}], "hello there"))
    # Input: the system prompt's words, the history's and the message's; output: the reply's.
    assert result.usage.input_tokens == len(SYSTEM_PROMPT.split()) + 2 + 2
    assert result.usage.output_tokens == 3  # echo: hello there
    assert result == asyncio.run(_agent().run([{"role": "user", "content": "a b"}], "hello there"))


def test_a_turns_usage_adds_up_every_model_call() -> None:
    used = TurnUsage()
    result = asyncio.run(_agent().run([], "calc 6*7", used))
    assert result.steps == 2
    assert used.usage == result.usage
    assert result.usage.input_tokens > 2 * 2  # two model calls, each sent "calc 6*7"


def test_a_streamed_turn_yields_the_reply_word_by_word_before_the_reply() -> None:
    async def events() -> list[dict[str, object]]:
        return [e async for e in _agent().events([], "one two  three", stream=True)]

    seen = asyncio.run(events())
    deltas = [e["content"] for e in seen if e["type"] == "delta"]
    assert deltas == ["echo: ", "one ", "two  ", "three"]
    assert "".join(str(d) for d in deltas) == seen[-1]["content"]
    assert seen[-1]["type"] == "reply"
    assert [e["type"] for e in seen].index("reply") == len(seen) - 1
