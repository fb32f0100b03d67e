"""Model providers behind one small interface: the embedded echo model and OpenAI-compatible."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from httpx_sse import EventSource, SSEError

from agent_service.config import Settings

Message = dict[str, Any]


@dataclass(frozen=True)
class RetryPolicy:
    """How one model call retries, all within its budget (AGENT_MODEL_TIMEOUT_S).

    Retried: statuses 408, 409, 429 and 5xx, connection errors and connect timeouts (the request
    never reached the API). Not retried: a read timeout (the API may still be working on it, a
    retry would pay twice) and any other answer. Waits grow exponentially with jitter, or follow
    the API's Retry-After, capped; a retry is not attempted when its wait would leave less than
    `min_attempt_s` of the budget: the call fails at once with the real cause (502) instead of
    sleeping into a 504.
    """

    retries: int = 3
    first_backoff_s: float = 0.25
    max_backoff_s: float = 4.0
    min_attempt_s: float = 1.0
    connect_timeout_s: float = 5.0
    statuses: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504})

    def backoff(self, attempt: int, retry_after: str | None) -> float:
        """Wait before retry number `attempt` (1-based); a Retry-After (seconds) wins, capped."""
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff_s)
            except ValueError:
                pass
        wait = min(self.max_backoff_s, self.first_backoff_s * 2 ** (attempt - 1))
        return float(wait * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret


@dataclass(frozen=True)
class ToolCall:
    """The model asks for one tool with JSON arguments."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Usage:
    """Tokens one call (or a whole turn) consumed."""

    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )

    @property
    def total(self) -> int:
        """Input and output tokens together (what budgets count)."""
        return self.input_tokens + self.output_tokens

    def as_dict(self) -> dict[str, int]:
        """The `usage` object of the API."""
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


@dataclass(frozen=True)
class ModelReply:
    """One completion: either final text or tool calls to run before asking again."""

    content: str
    tool_calls: tuple[ToolCall, ...] = field(default_factory=tuple)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"
    model: str | None = None  # as the provider names it in its answer


class ModelError(Exception):
    """The provider failed in a way retries did not fix (answered as 502 model-unavailable)."""


class ModelTimeout(Exception):
    """One model call took longer than its budget (answered as 504 model-timeout)."""


class ChatModel(Protocol):
    """A chat model: messages (OpenAI format) and tool specs in, one reply out."""

    provider: str

    async def complete(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> ModelReply:
        """Ask the model for the next step of the conversation."""

    def stream(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> AsyncIterator[str | ModelReply]:
        """The same step as text deltas while the model produces them, then the whole reply."""

    async def aclose(self) -> None:
        """Release connections."""


def count_tokens(text: str) -> int:
    """The echo model's deterministic token count: whitespace-separated words."""
    return len(text.split())


def _echo_usage(messages: Sequence[Message], reply: ModelReply) -> Usage:
    prompt = sum(count_tokens(str(m.get("content") or "")) for m in messages)
    output = count_tokens(reply.content) + sum(
        1 + count_tokens(json.dumps(c.arguments)) for c in reply.tool_calls
    )
    return Usage(prompt, output)


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
        reply = self._answer(messages)
        finish = "tool_calls" if reply.tool_calls else "stop"
        return ModelReply(
            reply.content, reply.tool_calls, _echo_usage(messages, reply), finish, "echo"
        )

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> AsyncIterator[str | ModelReply]:
        """Word by word (each word with the spaces after it), then the whole reply."""
        reply = await self.complete(messages, tools)
        for word in re.findall(r"\s*\S+\s*", reply.content):
            yield word
            await asyncio.sleep(0)  # a real model's tokens arrive one by one, too
        yield reply

    def _answer(self, messages: Sequence[Message]) -> ModelReply:
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
    """Any OpenAI-compatible chat completions API; one call retries within its own budget."""

    provider = "openai"

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str,
        timeout_s: float,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._model = model
        self._timeout_s = timeout_s
        self._policy = policy or RetryPolicy()
        self._client = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}
        )

    async def complete(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> ModelReply:
        body = self._body(messages, tools)
        response = await self._send_with_retries(body, stream=False)
        return _parse_reply(response)

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> AsyncIterator[str | ModelReply]:
        """`stream: true`: text deltas from the API's server-sent events, then the reply.

        Retries happen only before the first byte of an answer; closing this generator (the
        client left, the turn timed out) closes the connection, which stops the upstream call.
        """
        body = self._body(messages, tools)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        response = await self._send_with_retries(body, stream=True)
        merged = _StreamedReply()
        try:
            async for event in EventSource(response).aiter_sse():
                if event.data.strip() == "[DONE]":
                    break
                text = merged.add(event.json())
                if text:
                    yield text
        except (SSEError, ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            problem = f"model API streamed an unreadable reply ({type(err).__name__})"
            raise ModelError(problem) from err
        except httpx.TimeoutException as err:
            raise ModelTimeout("the model API stopped streaming within the budget") from err
        except httpx.TransportError as err:
            raise ModelError(f"model API stream broke: {type(err).__name__}") from err
        finally:
            await response.aclose()
        yield merged.reply()

    def _body(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._model, "messages": list(messages)}
        if tools:
            body["tools"] = list(tools)
        return body

    async def _send_with_retries(self, body: dict[str, Any], *, stream: bool) -> httpx.Response:
        loop = asyncio.get_running_loop()
        policy = self._policy
        deadline = loop.time() + self._timeout_s
        for attempt in range(1, policy.retries + 2):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ModelTimeout("the model call used up AGENT_MODEL_TIMEOUT_S")
            # Each attempt gets what is left of the call's budget, not a budget of its own.
            timeout = httpx.Timeout(remaining, connect=min(remaining, policy.connect_timeout_s))
            retry_after: str | None = None
            request = self._client.build_request(
                "POST", "/chat/completions", json=body, timeout=timeout
            )
            try:
                response = await self._client.send(request, stream=stream)
            except (httpx.ConnectTimeout, httpx.PoolTimeout) as err:
                failure = f"model API unreachable: {type(err).__name__}"
            except httpx.TimeoutException as err:
                raise ModelTimeout("the model API did not answer within the budget") from err
            except httpx.TransportError as err:
                failure = f"model API unreachable: {type(err).__name__}"
            else:
                if response.status_code not in policy.statuses and not response.is_error:
                    return response
                await response.aclose()  # a streamed answer's body is not wanted
                if response.status_code not in policy.statuses:
                    raise ModelError(f"model API answered {response.status_code}")
                failure = f"model API answered {response.status_code}"
                retry_after = response.headers.get("retry-after")
            wait = policy.backoff(attempt, retry_after)
            if attempt > policy.retries or loop.time() + wait + policy.min_attempt_s > deadline:
                raise ModelError(f"{failure} (after {attempt} attempts)")
            await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    async def aclose(self) -> None:
        await self._client.aclose()


def _usage(raw: Any) -> Usage:
    """The API's `usage` object; a provider that reports none counts as zero."""
    if not isinstance(raw, dict):
        return Usage()
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    return Usage(
        prompt if isinstance(prompt, int) and prompt >= 0 else 0,
        completion if isinstance(completion, int) and completion >= 0 else 0,
    )


@dataclass
class _StreamedReply:
    """A streamed completion put back together from its chunks."""

    content: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"
    model: str | None = None

    def add(self, chunk: dict[str, Any]) -> str:
        """Merge one chunk; the text it adds."""
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        text = ""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                merged = self.calls.setdefault(call["index"], {"id": "", "name": "", "args": ""})
                merged["id"] = call.get("id") or merged["id"]
                function = call.get("function") or {}
                merged["name"] += function.get("name") or ""
                merged["args"] += function.get("arguments") or ""
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        self.content.append(text)
        return text

    def reply(self) -> ModelReply:
        try:
            calls = tuple(
                ToolCall(c["id"], c["name"], json.loads(c["args"] or "{}"))
                for _, c in sorted(self.calls.items())
            )
        except ValueError as err:
            raise ModelError("model API streamed unreadable tool arguments") from err
        return ModelReply("".join(self.content), calls, self.usage, self.finish_reason, self.model)


def _parse_reply(response: httpx.Response) -> ModelReply:
    """The reply in a 2xx answer; anything unreadable is the provider's failure (502)."""
    try:
        answer = response.json()
        choice = answer["choices"][0]
        message = choice["message"]
        calls = tuple(
            ToolCall(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"] or "{}"))
            for c in message.get("tool_calls") or ()
        )
        content = message.get("content") or ""
        finish = str(choice.get("finish_reason") or "stop")
        usage = _usage(answer.get("usage"))
        model = answer.get("model")
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as err:
        # ValueError covers a body that is not JSON or is cut short (json.JSONDecodeError).
        raise ModelError(f"model API answered an unreadable reply ({type(err).__name__})") from err
    if not isinstance(content, str):
        raise ModelError("model API answered an unreadable reply (content is not text)")
    return ModelReply(content, calls, usage, finish, model if isinstance(model, str) else None)


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
        RetryPolicy(retries=settings.model_retries),
    )
