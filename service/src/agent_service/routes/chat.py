"""Chat turns, answered whole or streamed as server-sent events."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from agent_service.agent import Agent, ModelTimeout
from agent_service.deps import AgentDep, LifecycleDep, MetricsDep, SettingsDep, StoreDep
from agent_service.errors import ApiError, ErrorBody, store_unavailable_is_503
from agent_service.lifecycle import Phase
from agent_service.metrics import Metrics
from agent_service.providers import Message, ModelError
from agent_service.schemas import ChatRequest, ChatResponse
from agent_service.store import SessionStore

router = APIRouter(prefix="/v1", tags=["chat"])

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (413, 422, 502, 503, 504)
}
# One server-sent event, as OpenAPI 3.2 describes an event stream's items.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
    "required": ["event", "data"],
}


@dataclass(frozen=True)
class Turn:
    """A validated turn with its session's recent history loaded, and what it needs to finish."""

    session_id: str
    message: str
    history: list[Message]
    timeout_s: float
    agent: Agent
    store: SessionStore
    metrics: Metrics

    async def save(self, reply: str, steps: int) -> None:
        """Append the user's message and the reply in one atomic write."""
        now = time.time()
        with store_unavailable_is_503(self.metrics, "write"):
            await self.store.append(
                self.session_id,
                (
                    {"role": "user", "content": self.message, "ts": now},
                    {"role": "assistant", "content": reply, "ts": now, "steps": steps},
                ),
            )


async def begin_turn(
    body: ChatRequest,
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    agent: AgentDep,
    lifecycle: LifecycleDep,
    metrics: MetricsDep,
) -> Turn:
    """Refuse what cannot be served, then load the session's recent history."""
    # Draining still serves: load balancers need the drain delay to stop sending traffic.
    if lifecycle.phase is Phase.STARTING:
        raise ApiError(503, "starting", "the service is starting", {"Retry-After": "1"})
    if len(body.message) > settings.max_message_chars:
        raise ApiError(
            422, "message-too-long", f"message exceeds {settings.max_message_chars} characters"
        )
    session_id = body.session_id or secrets.token_urlsafe(16)
    request.state.session_id = session_id
    with store_unavailable_is_503(metrics, "read"):
        history = await store.recent(session_id, settings.context_messages)
    return Turn(
        session_id, body.message, history, settings.request_timeout_s, agent, store, metrics
    )


TurnDep = Annotated[Turn, Depends(begin_turn)]


@router.post("/chat", response_model=ChatResponse, responses=ERROR_RESPONSES)
async def chat(turn: TurnDep, request: Request) -> ChatResponse:
    """Run one agent turn and store both messages atomically."""
    try:
        async with asyncio.timeout(turn.timeout_s):
            result = await turn.agent.run(turn.history, turn.message)
    except (TimeoutError, ModelTimeout) as err:
        raise _timeout_error(err) from None
    except ModelError as err:
        raise ApiError(502, "model-unavailable", str(err)) from None
    await turn.save(result.reply, result.steps)
    return ChatResponse(
        session_id=turn.session_id,
        reply=result.reply,
        steps=result.steps,
        stop_reason=result.stop_reason,
        tool_calls=result.tool_calls,
        request_id=request.state.request_id,
    )


@router.post(
    "/chat/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
        **ERROR_RESPONSES,
    },
)
async def chat_stream(turn: TurnDep) -> StreamingResponse:
    """Run one turn, streaming tool calls and the reply as server-sent events."""

    async def events() -> AsyncIterator[str]:
        yield _sse("session", {"session_id": turn.session_id})
        final: dict[str, Any] = {}
        try:
            async with asyncio.timeout(turn.timeout_s):
                async for event in turn.agent.events(turn.history, turn.message):
                    if event["type"] == "reply":
                        final = event
                    else:
                        yield _sse(event.pop("type"), event)
            await turn.save(final["content"], final["steps"])
        except ApiError as err:
            yield _sse("error", {"error": err.reason, "message": err.message})
            return
        except (TimeoutError, ModelTimeout) as err:
            timeout = _timeout_error(err)
            yield _sse("error", {"error": timeout.reason, "message": timeout.message})
            return
        except ModelError as err:
            yield _sse("error", {"error": "model-unavailable", "message": str(err)})
            return
        final.pop("type")
        yield _sse("reply", {"session_id": turn.session_id, **final})

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _timeout_error(err: Exception) -> ApiError:
    if isinstance(err, ModelTimeout):
        return ApiError(504, "model-timeout", "a model call exceeded AGENT_MODEL_TIMEOUT_S")
    return ApiError(504, "turn-timeout", "the turn exceeded AGENT_REQUEST_TIMEOUT_S")


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
