"""The agent loop: tools, the step cap and the per-call timeout, with the embedded echo model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from agent_service import app as app_module
from agent_service.agent import Agent, ModelTimeout, TurnUsage, context_window
from agent_service.config import DEFAULT_SYSTEM_PROMPT
from agent_service.metrics import Metrics
from agent_service.providers import EchoModel, Message
from agent_service.tools import BUILTIN_TOOLS
from agent_service.usage import estimate_tokens, message_tokens


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
    assert result.usage.input_tokens == len(DEFAULT_SYSTEM_PROMPT.split()) + 2 + 2
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


class Recording(EchoModel):
    """The echo model, keeping every request it received: messages and offered tools."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[list[Message], list[dict[str, object]]]] = []

    async def complete(self, messages, tools):  # type: ignore[no-untyped-def]
        self.requests.append((list(messages), list(tools)))
        return await super().complete(messages, tools)


def test_the_configured_system_prompt_is_the_first_message_of_every_model_call() -> None:
    model = Recording()
    agent = Agent(model, BUILTIN_TOOLS, 8, 5.0, Metrics(), system_prompt="Answer in French.")
    asyncio.run(agent.run([{"role": "user", "content": "a"}], "calc 1+1"))
    assert len(model.requests) == 2  # the tool call and the answer
    for messages, _ in model.requests:
        assert messages[0] == {"role": "system", "content": "Answer in French."}


def test_only_enabled_tools_are_offered_and_another_is_refused_as_unknown() -> None:
    model = Recording()
    enabled = {"clock": BUILTIN_TOOLS["clock"]}
    result = asyncio.run(Agent(model, enabled, 8, 5.0, Metrics()).run([], "calc 6*7"))
    assert [t["function"]["name"] for t in model.requests[0][1]] == ["clock"]  # type: ignore[index]
    # The echo model asks for the calculator anyway, as a model may: it is not run.
    assert result.tool_calls == [
        {
            "name": "calculator",
            "arguments": {"expression": "6*7"},
            "result": "error: unknown tool 'calculator'",
        }
    ]
    assert model.requests[1][0][-1]["content"] == "error: unknown tool 'calculator'"


def test_with_no_tools_the_model_is_offered_none() -> None:
    model = Recording()
    result = asyncio.run(Agent(model, {}, 8, 5.0, Metrics()).run([], "hello"))
    assert model.requests[0][1] == []
    assert result.reply == "echo: hello"


def _history(*contents: str) -> list[Message]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]


def test_the_token_bound_keeps_the_newest_history_that_fits() -> None:
    history = _history("old " * 100, "echo: old", "recent", "echo: recent")
    fits_three = sum(message_tokens(m) for m in history[1:])
    assert context_window(history, fits_three) == history[1:]
    assert context_window(history, fits_three - 1) == history[2:]
    assert context_window(history, None) == history
    assert context_window(history, 1) == []


def test_the_window_is_contiguous_an_old_small_message_does_not_skip_a_large_one() -> None:
    history = _history("tiny", "large " * 200, "recent", "echo: recent")
    bound = sum(message_tokens(m) for m in history[2:]) + message_tokens(history[0])
    assert context_window(history, bound) == history[2:]


def test_the_token_bound_never_drops_the_system_prompt_or_the_message() -> None:
    model = Recording()
    agent = Agent(model, BUILTIN_TOOLS, 8, 5.0, Metrics(), context_max_tokens=1)
    history = _history("a", "echo: a")
    asyncio.run(agent.run(history, "word " * 500))
    (messages, _) = model.requests[0]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == DEFAULT_SYSTEM_PROMPT
    assert messages[1]["content"] == "word " * 500


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("abcd", 1),
        ("abcde", 2),
        ("a b c d e f g h", 8),  # 15 bytes, but 8 words: never fewer than the words
        ("日本語", 3),  # 9 bytes of UTF-8
        ("The quick brown fox jumps over the lazy dog.", 11),
    ],
)
def test_the_token_estimate_counts_bytes_by_four_and_at_least_the_words(
    text: str, tokens: int
) -> None:
    assert estimate_tokens(text) == tokens


_TWO_NEWEST = message_tokens({"content": "turn 2"}) + message_tokens({"content": "echo: turn 2"})


@pytest.mark.parametrize(
    ("max_tokens", "history"),
    [
        (None, ["turn 1", "echo: turn 1", "turn 2", "echo: turn 2"]),  # the count alone
        (_TWO_NEWEST, ["turn 2", "echo: turn 2"]),  # the token bound cuts further
    ],
    ids=["messages", "tokens"],
)
def test_the_app_gives_the_model_the_configured_prompt_tools_and_window_and_stores_everything(
    make_client: Callable[..., TestClient],
    monkeypatch: pytest.MonkeyPatch,
    max_tokens: int | None,
    history: list[str],
) -> None:
    model = Recording()
    monkeypatch.setattr(app_module, "open_model", lambda settings: model)
    client = make_client(
        system_prompt="Answer in French.",
        tools=("word_count",),
        context_max_messages=4,
        context_max_tokens=max_tokens,
    )
    for i in range(4):
        assert client.post("/v1/chat", json={"session_id": "s", "message": f"turn {i}"}).is_success
    messages, tools = model.requests[-1]
    assert [t["function"]["name"] for t in tools] == ["word_count"]  # type: ignore[index]
    assert messages[0] == {"role": "system", "content": "Answer in French."}
    assert [m["content"] for m in messages[1:-1]] == history
    assert messages[-1] == {"role": "user", "content": "turn 3"}
    stored = client.get("/v1/sessions/s").json()["messages"]
    assert len(stored) == 8  # the window cuts what is sent, never what is kept
