"""The agent loop: model calls and tool calls, capped in steps and time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import Span, SpanKind, StatusCode

from agent_service import tracing
from agent_service.config import DEFAULT_SYSTEM_PROMPT
from agent_service.metrics import Metrics
from agent_service.providers import ChatModel, Message, ModelError, ModelReply, ModelTimeout, Usage
from agent_service.tools import Tool
from agent_service.usage import message_tokens

__all__ = ["Agent", "ModelTimeout", "TurnResult", "TurnUsage", "context_window"]


@dataclass(frozen=True)
class TurnResult:
    """The outcome of one turn: the reply and how it was reached."""

    reply: str
    steps: int
    stop_reason: str
    tool_calls: list[dict[str, Any]]
    usage: Usage = field(default_factory=Usage)


@dataclass
class TurnUsage:
    """What a turn's model calls have used so far: known even when the turn fails midway."""

    usage: Usage = field(default_factory=Usage)
    model: str = ""


def context_window(history: Sequence[Message], max_tokens: int | None) -> list[Message]:
    """The newest messages of `history` whose token estimate fits `max_tokens` (None: all).

    The window is contiguous: it ends at the first older message that does not fit.
    """
    if max_tokens is None:
        return list(history)
    kept, total = 0, 0
    for message in reversed(history):
        total += message_tokens(message)
        if total > max_tokens:
            break
        kept += 1
    return list(history[len(history) - kept :])


class Agent:
    """Runs turns against one model with a fixed system prompt, tool set and context window.

    Only `tools` are offered to the model, and a call to any other name is answered as an
    unknown tool. The stored history a turn receives is already cut to the configured number of
    messages (by the store); `context_max_tokens` bounds its token estimate too. The system
    prompt and the turn's message are always sent.
    """

    def __init__(
        self,
        model: ChatModel,
        tools: Mapping[str, Tool],
        max_steps: int,
        model_timeout_s: float,
        metrics: Metrics,
        model_name: str = "",
        *,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        context_max_tokens: int | None = None,
    ) -> None:
        self._model = model
        self.model_name = model_name or model.provider
        self._tools = tools
        self._specs = [tool.spec() for tool in tools.values()]
        self._max_steps = max_steps
        self._model_timeout_s = model_timeout_s
        self._metrics = metrics
        self._system_prompt = system_prompt
        self._context_max_tokens = context_max_tokens

    async def events(
        self,
        history: Sequence[Message],
        text: str,
        *,
        stream: bool = False,
        used: TurnUsage | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Run a turn, yielding each tool call, tool result and finally the reply.

        With `stream`, the model's text also arrives as `delta` events while it is produced.
        `used` accumulates the turn's token usage as each model call ends.
        """
        used = used if used is not None else TurnUsage()
        used.model = self.model_name
        messages: list[Message] = [{"role": "system", "content": self._system_prompt}]
        window = context_window(history, self._context_max_tokens)
        messages.extend({"role": m["role"], "content": m["content"]} for m in window)
        messages.append({"role": "user", "content": text})
        for step in range(1, self._max_steps + 1):
            reply: ModelReply | None = None
            async with contextlib.aclosing(self._call_model(messages, stream)) as parts:
                async for part in parts:
                    if isinstance(part, str):
                        yield {"type": "delta", "step": step, "content": part}
                    else:
                        reply = part
            assert reply is not None  # a model call ends with its reply or raises
            used.usage += reply.usage
            if not reply.tool_calls:
                self._metrics.turn_steps.observe(step)
                yield {
                    "type": "reply",
                    "content": reply.content,
                    "steps": step,
                    "stop_reason": "complete",
                    "usage": used.usage,
                }
                return
            messages.append(
                {
                    "role": "assistant",
                    "content": reply.content or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                        }
                        for c in reply.tool_calls
                    ],
                }
            )
            for call in reply.tool_calls:
                yield {
                    "type": "tool_call",
                    "step": step,
                    "name": call.name,
                    "arguments": call.arguments,
                }
                result = self._call_tool(call.id, call.name, call.arguments)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
                yield {"type": "tool_result", "step": step, "name": call.name, "result": result}
        self._metrics.turn_steps.observe(self._max_steps)
        yield {
            "type": "reply",
            "content": f"Stopped after {self._max_steps} steps without a final answer.",
            "steps": self._max_steps,
            "stop_reason": "max_steps",
            "usage": used.usage,
        }

    def _call_tool(self, call_id: str, name: str, arguments: dict[str, Any]) -> str:
        with tracing.tracer().start_as_current_span(
            f"execute_tool {name}",
            kind=SpanKind.INTERNAL,
            attributes={
                tracing.OPERATION: "execute_tool",
                tracing.TOOL_NAME: name,
                tracing.TOOL_CALL_ID: call_id,
            },
        ) as span:
            tool = self._tools.get(name)
            result = tool.call(arguments) if tool else f"error: unknown tool {name!r}"
            if tool is None:
                span.set_attribute(tracing.ERROR_TYPE, "unknown-tool")
            if span.is_recording() and tracing.capture_content():
                span.set_attribute(tracing.TOOL_ARGUMENTS, json.dumps(arguments))
                span.set_attribute(tracing.TOOL_RESULT, result)
            return result

    async def run(
        self, history: Sequence[Message], text: str, used: TurnUsage | None = None
    ) -> TurnResult:
        """Run a turn to its end."""
        calls: list[dict[str, Any]] = []
        used = used if used is not None else TurnUsage()
        # Closed here, not left suspended after the reply: an abandoned async generator is
        # finalised by a task the loop schedules through its self-pipe, once per turn.
        async with contextlib.aclosing(self.events(history, text, used=used)) as events:
            async for event in events:
                if event["type"] == "tool_call":
                    calls.append({"name": event["name"], "arguments": event["arguments"]})
                elif event["type"] == "tool_result":
                    calls[-1]["result"] = event["result"]
                else:
                    return TurnResult(
                        event["content"], event["steps"], event["stop_reason"], calls, used.usage
                    )
        raise AssertionError("a turn always ends with a reply")  # pragma: no cover

    async def _call_model(
        self, messages: list[Message], stream: bool
    ) -> AsyncGenerator[str | ModelReply, None]:
        """One model call: its text deltas when streaming, then its reply, within its budget."""
        started = time.perf_counter()
        outcome = "ok"
        deadline = asyncio.get_running_loop().time() + self._model_timeout_s
        span = tracing.tracer().start_span(
            f"chat {self.model_name}",
            kind=SpanKind.CLIENT,
            attributes={
                tracing.OPERATION: "chat",
                tracing.PROVIDER: self._model.provider,
                tracing.SYSTEM: self._model.provider,
                tracing.REQUEST_MODEL: self.model_name,
            },
        )
        if span.is_recording() and tracing.capture_content():
            span.set_attribute(tracing.INPUT_MESSAGES, json.dumps(messages, default=str))
        try:
            if not stream:
                async with asyncio.timeout_at(deadline):
                    reply = await self._model.complete(messages, self._specs)
            else:
                # The budget covers the whole stream; each wait for the next part is bounded
                # by what is left of it (a timeout must not span a yield).
                parts = self._model.stream(messages, self._specs)
                streamed: ModelReply | None = None
                async with contextlib.aclosing(parts):  # type: ignore[type-var]
                    while streamed is None:
                        async with asyncio.timeout_at(deadline):
                            part = await anext(parts)
                        if isinstance(part, str):
                            yield part
                        else:
                            streamed = part
                reply = streamed
            _end_model_span(span, reply)
            yield reply
        except (TimeoutError, ModelTimeout):
            outcome = "timeout"
            span.set_attribute(tracing.ERROR_TYPE, "timeout")
            raise ModelTimeout("a model call exceeded AGENT_MODEL_TIMEOUT_S") from None
        except ModelError:
            outcome = "error"
            span.set_attribute(tracing.ERROR_TYPE, "model-unavailable")
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # The turn ended around the call (client gone, turn timeout, shutdown): not an answer.
            outcome = "cancelled"
            span.set_attribute(tracing.ERROR_TYPE, "cancelled")
            raise
        finally:
            if outcome != "ok":
                span.set_status(StatusCode.ERROR)
            span.end()
            self._metrics.model_seconds.labels(self._model.provider, outcome).observe(
                time.perf_counter() - started
            )


def _end_model_span(span: Span, reply: ModelReply) -> None:
    if not span.is_recording():
        return
    span.set_attribute(tracing.INPUT_TOKENS, reply.usage.input_tokens)
    span.set_attribute(tracing.OUTPUT_TOKENS, reply.usage.output_tokens)
    span.set_attribute(tracing.FINISH_REASONS, [reply.finish_reason])
    if reply.model:
        span.set_attribute(tracing.RESPONSE_MODEL, reply.model)
    if tracing.capture_content():
        content: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            content["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls
            ]
        span.set_attribute(tracing.OUTPUT_MESSAGES, json.dumps([content]))
