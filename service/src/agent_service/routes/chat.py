"""Chat turns, answered whole or streamed as server-sent events."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from agent_service.agent import ModelTimeout
from agent_service.deps import AgentDep, LifecycleDep, MetricsDep, SettingsDep, StoreDep
from agent_service.errors import ApiError, ErrorBody
from agent_service.lifecycle import Lifecycle, Phase
from agent_service.metrics import Metrics
from agent_service.providers import Message, ModelError
from agent_service.schemas import ChatRequest, ChatResponse
from agent_service.store import SessionStore, StoreUnavailable

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
_STORE_DOWN = "the session store is unavailable; retry shortly"


@router.post("/chat", response_model=ChatResponse, responses=ERROR_RESPONSES)
async def chat(
    body: ChatRequest,
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    agent: AgentDep,
    lifecycle: LifecycleDep,
    metrics: MetricsDep,
) -> ChatResponse:
    """Run one agent turn and store both messages atomically."""
    session_id = _begin(body, request, settings.max_message_chars, lifecycle)
    history = await _recent(store, metrics, session_id, settings.context_messages)
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            result = await agent.run(history, body.message)
    except (TimeoutError, ModelTimeout) as err:
        raise _timeout_error(err) from None
    except ModelError as err:
        raise ApiError(502, "model-unavailable", str(err)) from None
    await _save(store, metrics, session_id, body.message, result.reply, result.steps)
    return ChatResponse(
        session_id=session_id,
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
async def chat_stream(
    body: ChatRequest,
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    agent: AgentDep,
    lifecycle: LifecycleDep,
    metrics: MetricsDep,
) -> StreamingResponse:
    """Run one turn, streaming tool calls and the reply as server-sent events."""
    session_id = _begin(body, request, settings.max_message_chars, lifecycle)
    history = await _recent(store, metrics, session_id, settings.context_messages)

    async def events() -> AsyncIterator[str]:
        yield _sse("session", {"session_id": session_id})
        final: dict[str, Any] = {}
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                async for event in agent.events(history, body.message):
                    if event["type"] == "reply":
                        final = event
                    else:
                        yield _sse(event.pop("type"), event)
            await _save(store, metrics, session_id, body.message, final["content"], final["steps"])
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
        yield _sse("reply", {"session_id": session_id, **final})

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _begin(body: ChatRequest, request: Request, max_chars: int, lifecycle: Lifecycle) -> str:
    # Draining still serves: load balancers need the drain delay to stop sending traffic.
    if lifecycle.phase is Phase.STARTING:
        raise ApiError(503, "starting", "the service is starting", {"Retry-After": "1"})
    if len(body.message) > max_chars:
        raise ApiError(422, "message-too-long", f"message exceeds {max_chars} characters")
    session_id = body.session_id or secrets.token_urlsafe(16)
    request.state.session_id = session_id
    return session_id


async def _recent(
    store: SessionStore, metrics: Metrics, session_id: str, limit: int
) -> list[Message]:
    try:
        return await store.recent(session_id, limit)
    except StoreUnavailable:
        metrics.store_errors.labels("read").inc()
        raise ApiError(503, "store-unavailable", _STORE_DOWN, {"Retry-After": "1"}) from None


async def _save(
    store: SessionStore, metrics: Metrics, session_id: str, text: str, reply: str, steps: int
) -> None:
    now = time.time()
    try:
        await store.append(
            session_id,
            (
                {"role": "user", "content": text, "ts": now},
                {"role": "assistant", "content": reply, "ts": now, "steps": steps},
            ),
        )
    except StoreUnavailable:
        metrics.store_errors.labels("write").inc()
        raise ApiError(503, "store-unavailable", _STORE_DOWN, {"Retry-After": "1"}) from None


def _timeout_error(err: Exception) -> ApiError:
    if isinstance(err, ModelTimeout):
        return ApiError(504, "model-timeout", "a model call exceeded AGENT_MODEL_TIMEOUT_S")
    return ApiError(504, "turn-timeout", "the turn exceeded AGENT_REQUEST_TIMEOUT_S")


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
