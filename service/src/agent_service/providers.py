"""Model providers behind one small interface: the embedded echo model and OpenAI-compatible."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from agent_service.config import Settings

Message = dict[str, Any]
_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
_MAX_ATTEMPTS = 4
_MAX_BACKOFF_S = 4.0


@dataclass(frozen=True)
class ToolCall:
    """The model asks for one tool with JSON arguments."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ModelReply:
    """One completion: either final text or tool calls to run before asking again."""

    content: str
    tool_calls: tuple[ToolCall, ...] = field(default_factory=tuple)


class ModelError(Exception):
    """The provider failed in a way retries did not fix."""


class ChatModel(Protocol):
    """A chat model: messages (OpenAI format) and tool specs in, one reply out."""

    provider: str

    async def complete(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> ModelReply:
        """Ask the model for the next step of the conversation."""

    async def aclose(self) -> None:
        """Release connections."""


class EchoModel:
    """Embedded, offline and deterministic: echoes the user and drives tools by keyword.

    `calc <expr>`, `count <text>` and `time` call a tool once; `loop` calls tools until the
    step cap stops it; anything else is echoed back.
    """

    provider = "echo"

    def __init__(self, latency_s: float = 0.0) -> None:
        self._latency_s = latency_s

    async def complete(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> ModelReply:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        last = messages[-1] if messages else {"role": "user", "content": ""}
        prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        command, _, rest = str(prompt).strip().partition(" ")
        if last["role"] == "tool":
            if command == "loop":
                return ModelReply("", (ToolCall(f"call-{len(messages)}", "clock", {}),))
            return ModelReply(f"{command}: {last['content']}")
        call = {
            "calc": ("calculator", {"expression": rest}),
            "count": ("word_count", {"text": rest}),
            "time": ("clock", {}),
            "loop": ("clock", {}),
        }.get(command)
        if call is not None:
            return ModelReply("", (ToolCall(f"call-{len(messages)}", *call),))
        return ModelReply(f"echo: {prompt}")

    async def aclose(self) -> None:
        return None


class OpenAIModel:
    """Any OpenAI-compatible chat completions API, with retries on 429 and 5xx."""

    provider = "openai"

    def __init__(self, model: str, base_url: str, api_key: str, timeout_s: float) -> None:
        self._model = model
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        )

    async def complete(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> ModelReply:
        body: dict[str, Any] = {"model": self._model, "messages": list(messages)}
        if tools:
            body["tools"] = list(tools)
        data = await self._post_with_retries(body)
        try:
            message = data["choices"][0]["message"]
            calls = tuple(
                ToolCall(
                    c["id"], c["function"]["name"], json.loads(c["function"]["arguments"] or "{}")
                )
                for c in message.get("tool_calls") or ()
            )
            return ModelReply(message.get("content") or "", calls)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise ModelError(f"unexpected response shape: {type(err).__name__}") from err

    async def _post_with_retries(self, body: dict[str, Any]) -> Any:
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                response = await self._client.post("/chat/completions", json=body)
            except httpx.TimeoutException as err:
                raise ModelError("model call timed out") from err
            except httpx.TransportError as err:
                if attempt == _MAX_ATTEMPTS:
                    raise ModelError(f"model API unreachable: {type(err).__name__}") from err
                await asyncio.sleep(_backoff(attempt, None))
                continue
            if response.status_code in _RETRY_STATUSES and attempt < _MAX_ATTEMPTS:
                await asyncio.sleep(_backoff(attempt, response.headers.get("retry-after")))
                continue
            if response.is_error:
                raise ModelError(f"model API answered {response.status_code}")
            return response.json()
        raise ModelError("model API kept failing")  # pragma: no cover - loop always returns

    async def aclose(self) -> None:
        await self._client.aclose()


def _backoff(attempt: int, retry_after: str | None) -> float:
    """Exponential backoff with jitter; a server's Retry-After (seconds) wins, within the cap."""
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), _MAX_BACKOFF_S)
        except ValueError:
            pass
    return float(min(_MAX_BACKOFF_S, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))  # noqa: S311


def open_model(settings: Settings) -> ChatModel:
    """The provider the settings name."""
    if settings.model == "echo":
        return EchoModel(settings.echo_latency_ms / 1000)
    assert settings.model_api_key is not None  # guaranteed by settings validation
    return OpenAIModel(
        settings.model.partition(":")[2],
        settings.model_base_url,
        settings.model_api_key.get_secret_value(),
        settings.model_timeout_s,
    )
