"""The agent loop: model calls and tool calls, capped in steps and time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent_service.metrics import Metrics
from agent_service.providers import ChatModel, Message, ModelError, ModelTimeout
from agent_service.tools import Tool

__all__ = ["Agent", "ModelTimeout", "TurnResult"]

SYSTEM_PROMPT = "You are a helpful assistant. Use the tools when they help."


@dataclass(frozen=True)
class TurnResult:
    """The outcome of one turn: the reply and how it was reached."""

    reply: str
    steps: int
    stop_reason: str
    tool_calls: list[dict[str, Any]]


class Agent:
    """Runs turns against one model with a fixed tool set."""

    def __init__(
        self,
        model: ChatModel,
        tools: Mapping[str, Tool],
        max_steps: int,
        model_timeout_s: float,
        metrics: Metrics,
    ) -> None:
        self._model = model
        self._tools = tools
        self._specs = [tool.spec() for tool in tools.values()]
        self._max_steps = max_steps
        self._model_timeout_s = model_timeout_s
        self._metrics = metrics

    async def events(
        self, history: Sequence[Message], text: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Run a turn, yielding each tool call, tool result and finally the reply."""
        messages: list[Message] = [{"role": "system", "content": SYSTEM_PROMPT}]
        messages.extend({"role": m["role"], "content": m["content"]} for m in history)
        messages.append({"role": "user", "content": text})
        for step in range(1, self._max_steps + 1):
            reply = await self._call_model(messages)
            if not reply.tool_calls:
                self._metrics.turn_steps.observe(step)
                yield {
                    "type": "reply",
                    "content": reply.content,
                    "steps": step,
                    "stop_reason": "complete",
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
                tool = self._tools.get(call.name)
                result = tool.call(call.arguments) if tool else f"error: unknown tool {call.name!r}"
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
                yield {"type": "tool_result", "step": step, "name": call.name, "result": result}
        self._metrics.turn_steps.observe(self._max_steps)
        yield {
            "type": "reply",
            "content": f"Stopped after {self._max_steps} steps without a final answer.",
            "steps": self._max_steps,
            "stop_reason": "max_steps",
        }

    async def run(self, history: Sequence[Message], text: str) -> TurnResult:
        """Run a turn to its end."""
        calls: list[dict[str, Any]] = []
        # Closed here, not left suspended after the reply: an abandoned async generator is
        # finalised by a task the loop schedules through its self-pipe, once per turn.
        async with contextlib.aclosing(self.events(history, text)) as events:
            async for event in events:
                if event["type"] == "tool_call":
                    calls.append({"name": event["name"], "arguments": event["arguments"]})
                elif event["type"] == "tool_result":
                    calls[-1]["result"] = event["result"]
                else:
                    return TurnResult(event["content"], event["steps"], event["stop_reason"], calls)
        raise AssertionError("a turn always ends with a reply")  # pragma: no cover

    async def _call_model(self, messages: list[Message]) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            async with asyncio.timeout(self._model_timeout_s):
                return await self._model.complete(messages, self._specs)
        except TimeoutError:
            outcome = "timeout"
            raise ModelTimeout("a model call exceeded AGENT_MODEL_TIMEOUT_S") from None
        except ModelTimeout:
            outcome = "timeout"
            raise
        except ModelError:
            outcome = "error"
            raise
        except asyncio.CancelledError:
            # The turn ended around the call (client gone, turn timeout, shutdown): not an answer.
            outcome = "cancelled"
            raise
        finally:
            self._metrics.model_seconds.labels(self._model.provider, outcome).observe(
                time.perf_counter() - started
            )
