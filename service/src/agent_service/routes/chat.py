"""Chat turns, answered whole or streamed as server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from opentelemetry.trace import Span
from pydantic import ValidationError

from agent_service import tracing
from agent_service.agent import Agent, ModelTimeout, TurnUsage
from agent_service.budgets import BudgetExceeded, Reservation, session_budget_keys
from agent_service.deps import AppState, app_state, authenticate, client_of
from agent_service.errors import ApiError, ErrorBody, store_unavailable_is_503
from agent_service.lifecycle import Phase
from agent_service.metrics import Metrics
from agent_service.providers import Message, ModelError
from agent_service.schemas import IDEMPOTENCY_KEY_PATTERN, ChatRequest, ChatResponse
from agent_service.store import SessionStore, StoreUnavailable, session_tag

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["chat"], dependencies=[Depends(authenticate)])
REPLAYED_HEADER = "Idempotent-Replayed"

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (401, 404, 413, 422, 429, 502, 503, 504)
}
# One server-sent event, as OpenAPI 3.2 describes an event stream's items.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
    "required": ["event", "data"],
}


# The values of `agent_turns_total{outcome}`: bounded, whatever a turn ends with.
OUTCOMES = frozenset(
    {
        "ok",
        "replayed",
        "starting",
        "session-not-found",
        "budget-exceeded",
        "message-too-long",
        "invalid-idempotency-key",
        "idempotency-key-reused",
        "store-unavailable",
        "model-unavailable",
        "model-timeout",
        "turn-timeout",
        "client-gone",
        "cancelled",
        "internal",
    }
)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
IDEMPOTENCY_HEADER = "Idempotency-Key"
# A turn's route takes only the request: FastAPI resolves each declared parameter per request
# at a cost above the turn's own work (make bench), so the body and the Idempotency-Key header
# are read by `chat_request` and `begin_turn`. The document still describes both; the
# router's dependencies (authentication) still run for every turn.
CHAT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
    },
    "parameters": [
        {
            "name": IDEMPOTENCY_HEADER,
            "in": "header",
            "required": False,
            "description": "Repeat a turn safely: a repeat (same session) gets the stored answer.",
            "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
        }
    ],
}


async def chat_request(request: Request) -> ChatRequest:
    """The turn's body, parsed and validated by pydantic in one pass over the raw bytes.

    FastAPI's own body handling decodes JSON to a dict and validates that, then the endpoint's
    answer is validated again on the way out; together that cost more CPU than the turn's Redis
    work (make bench). Errors keep FastAPI's shape: 422 with `loc` starting at `body`.
    """
    body = await request.body()
    if not body:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        if _is_json(request.headers.get("content-type", "")):
            return ChatRequest.model_validate_json(body)
        return ChatRequest.model_validate(body)  # not JSON: refused as FastAPI refuses it
    except ValidationError as err:
        raise RequestValidationError(_body_errors(err, body)) from None


def _is_json(content_type: str) -> bool:
    """FastAPI's rule: `application/json` or `application/<anything>+json`, any parameters."""
    kind, _, subtype = content_type.partition(";")[0].strip().lower().partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _body_errors(err: ValidationError, body: bytes) -> list[dict[str, Any]]:
    return [
        # Where decoding stopped, as FastAPI reports it: `["body", <offset>]`.
        {"type": "json_invalid", "loc": ("body", _decode_offset(body)), "msg": "JSON decode error"}
        if error["type"] == "json_invalid"
        else {**error, "loc": ("body", *error["loc"])}
        for error in err.errors(include_url=False, include_input=False)
    ]


def _decode_offset(body: bytes) -> int:
    try:
        json.loads(body)
    except json.JSONDecodeError as err:
        return err.pos
    except ValueError:  # not UTF-8 at all
        pass
    return 0


@dataclass(frozen=True)
class Turn:
    """A validated turn with its session's recent history loaded, and what it needs to finish.

    `deadline` (event-loop time) bounds everything the turn does after it began, store calls
    included; `replay` is the stored answer of an earlier turn with the same Idempotency-Key.
    """

    session_id: str
    message: str
    history: list[Message]
    deadline: float
    turn_id: str
    keyed: bool
    replay: dict[str, Any] | None
    mode: str
    agent: Agent
    store: SessionStore
    metrics: Metrics
    client: str | None
    state: AppState

    def count(self, outcome: str) -> None:
        """Count the turn's outcome once it is known."""
        self.metrics.turns.labels(self.mode, outcome if outcome in OUTCOMES else "internal").inc()

    async def reserve(self) -> Spend:
        """Reserve the turn's tokens in its budgets: 429 `budget-exceeded` when one is spent."""
        policy = self.state["budget_policy"]
        spend = Spend(TurnUsage())
        budgets = policy.budgets(session_tag(self.session_id), self.client)
        if not budgets:
            return spend
        try:
            with store_unavailable_is_503(self.metrics, "budget"), _turn_timeout():
                async with asyncio.timeout_at(self.deadline):
                    spend.reservation = await self.state["budgets"].reserve(
                        budgets, policy.turn_tokens
                    )
        except BudgetExceeded as err:
            self.metrics.budget_refusals.labels(err.scope).inc()
            raise ApiError(
                429,
                "budget-exceeded",
                f"{err}; retry after {err.retry_after_s} s",
                {"Retry-After": str(err.retry_after_s)},
            ) from None
        return spend

    async def settle(self, spend: Spend) -> dict[str, Any]:
        """Count what the turn used (metrics, budgets), once; the answer's `usage` object."""
        if spend.answer is not None:
            return spend.answer
        used = spend.used
        spend.answer = self.state["usage"].record(self.client, used.model, used.usage)
        budgets, policy = self.state["budgets"], self.state["budget_policy"]
        try:
            if spend.reservation is not None:
                await budgets.settle(spend.reservation, used.usage)
            if policy.session_tokens is None and used.usage.total:
                # The session's totals (its history's `usage`), which a session budget keeps.
                keys = session_budget_keys(session_tag(self.session_id))
                await budgets.record(keys, used.usage, policy.session_ttl_s)
        except StoreUnavailable:
            # A reservation's lease ends by itself; this turn's tokens go unrecorded.
            self.metrics.store_errors.labels("budget").inc()
            log.warning("a turn's token usage could not be recorded in its budgets")
        return spend.answer

    async def save(self, answer: dict[str, Any]) -> dict[str, Any]:
        """Store the turn once; the answer to give: this one, or the one stored before."""
        now = time.time()
        # Only a client's Idempotency-Key is ever looked up again; a minted turn id just
        # makes a retried write a no-op.
        record = json.dumps({"d": _digest(self.message), "a": answer}) if self.keyed else ""
        with store_unavailable_is_503(self.metrics, "write"):
            prior = await self.store.append(
                self.session_id,
                self.turn_id,
                record,
                (
                    {"role": "user", "content": self.message, "ts": now},
                    {
                        "role": "assistant",
                        "content": answer["reply"],
                        "ts": now,
                        "steps": answer["steps"],
                        "usage": answer["usage"],
                    },
                ),
            )
        if prior:  # a concurrent turn with the same key was stored first: its answer counts
            return dict(json.loads(prior)["a"])
        return answer


@dataclass
class Spend:
    """A turn's reservation in its budgets and what it used; settled once, however it ends."""

    used: TurnUsage
    reservation: Reservation | None = None
    answer: dict[str, Any] | None = None


async def begin_turn(body: ChatRequest, request: Request, state: AppState) -> Turn:
    """Refuse what cannot be served, then load the session's recent history."""
    idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
    settings, store, metrics = state["settings"], state["store"], state["metrics"]
    deadline = asyncio.get_running_loop().time() + settings.request_timeout_s
    mode = "stream" if request.scope["path"].endswith("/stream") else "whole"
    try:
        # Draining still serves: load balancers need the drain delay to stop sending traffic.
        if state["lifecycle"].phase is Phase.STARTING:
            raise ApiError(503, "starting", "the service is starting", {"Retry-After": "1"})
        if len(body.message) > settings.max_message_chars:
            raise ApiError(
                422, "message-too-long", f"message exceeds {settings.max_message_chars} characters"
            )
        if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
            raise ApiError(
                422,
                "invalid-idempotency-key",
                "Idempotency-Key must be 1-255 visible ASCII characters",
            )
        session_id = body.session_id or secrets.token_urlsafe(16)
        request.state.session_id = session_id
        turn_id = "k:" + idempotency_key if idempotency_key else "t:" + secrets.token_hex(8)
        client = client_of(request)
        with store_unavailable_is_503(metrics, "read"), _turn_timeout():
            async with asyncio.timeout_at(deadline):
                # A session belongs to the client whose turn created it; to others it is unknown.
                if client is not None and not await state["owners"].claim(
                    session_tag(session_id), client
                ):
                    raise ApiError(
                        404, "session-not-found", "no such session (it may have expired)"
                    )
                context = await store.context(
                    session_id, settings.context_max_messages, turn_id if idempotency_key else None
                )
        replay = None
        if context.record:
            stored = json.loads(context.record)
            if stored["d"] != _digest(body.message):
                raise ApiError(
                    422,
                    "idempotency-key-reused",
                    "this Idempotency-Key was used for another message in this session",
                )
            replay = dict(stored["a"])
    except ApiError as err:
        metrics.turns.labels(mode, err.reason if err.reason in OUTCOMES else "internal").inc()
        raise
    return Turn(
        session_id,
        body.message,
        context.history,
        deadline,
        turn_id,
        idempotency_key is not None,
        replay,
        mode,
        state["agent"],
        store,
        metrics,
        client,
        state,
    )


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=CHAT_OPENAPI,
)
async def chat(request: Request) -> Response:
    """Run one agent turn and store both messages atomically, once.

    The answer is serialised here in one call, not validated again by FastAPI on its way out.
    """
    body, state = await chat_request(request), app_state(request)
    with tracing.turn(request.headers, state["agent"].model_name) as span:
        outcome, usage = "internal", None
        try:
            response, outcome, usage = await _chat(body, request, state)
            return response
        except ApiError as err:
            outcome = err.reason
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            tracing.end_turn(span, getattr(request.state, "session_id", None), outcome, usage)


async def _chat(
    body: ChatRequest, request: Request, state: AppState
) -> tuple[Response, str, dict[str, Any] | None]:
    """The turn of `chat`: its response, outcome and usage."""
    turn = await begin_turn(body, request, state)
    answer = turn.replay
    if answer is not None:
        turn.count("replayed")
    else:
        outcome = "internal"
        spend: Spend | None = None
        try:
            spend = await turn.reserve()
            with _turn_timeout():
                async with asyncio.timeout_at(turn.deadline):
                    result = await turn.agent.run(turn.history, turn.message, spend.used)
                    own = {
                        "session_id": turn.session_id,
                        "reply": result.reply,
                        "steps": result.steps,
                        "stop_reason": result.stop_reason,
                        "tool_calls": result.tool_calls,
                        "usage": await turn.settle(spend),
                    }
                    answer = await turn.save(own)
            outcome = "ok" if answer is own else "replayed"
        except ApiError as err:
            outcome = err.reason
            raise
        except ModelError as err:
            outcome = "model-unavailable"
            raise ApiError(502, "model-unavailable", str(err)) from None
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if spend is not None:
                await turn.settle(spend)  # a failed turn's model calls count too
            turn.count(outcome)
        if outcome == "ok":
            own_answer = ChatResponse(**answer, request_id=request.state.request_id)
            return _json(own_answer), outcome, answer["usage"]
    replayed = ChatResponse(**answer, request_id=request.state.request_id)
    return _json(replayed, {REPLAYED_HEADER: "true"}), "replayed", answer.get("usage")


@router.post(
    "/chat/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
        **ERROR_RESPONSES,
    },
    openapi_extra=CHAT_OPENAPI,
)
async def chat_stream(request: Request) -> StreamingResponse:
    """Run one turn, streaming tool calls and the reply as server-sent events.

    A turn whose client disconnects before its end is not stored.
    """
    body, state = await chat_request(request), app_state(request)
    # Started here, current only while the stream's own steps run (see `tracing.within`).
    span = tracing.start_turn(request.headers, state["agent"].model_name)
    spend: Spend | None = None
    try:
        turn = await begin_turn(body, request, state)
        if turn.replay is None:
            try:
                spend = await turn.reserve()  # before the stream starts: a refusal is a real 429
            except ApiError as err:
                turn.count(err.reason)
                raise
    except ApiError as err:
        tracing.end_turn(span, getattr(request.state, "session_id", None), err.reason, None)
        span.end()
        raise

    return StreamingResponse(
        tracing.within(span, _turn_events(turn, spend, span)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _turn_events(turn: Turn, spend: Spend | None, span: Span) -> AsyncGenerator[str, None]:
    """The server-sent events of a streamed turn; counts and records how it ended."""
    outcome = "client-gone"  # unless the turn gets further
    usage: dict[str, Any] | None = None
    try:
        yield _sse("session", {"session_id": turn.session_id})
        if turn.replay is not None:
            outcome, usage = "replayed", turn.replay.get("usage")
            yield _sse("reply", _reply_event(turn.replay))
            return
        final: dict[str, Any] = {}
        calls: list[dict[str, Any]] = []
        assert spend is not None  # reserved unless the answer is a replay
        try:
            with _turn_timeout():
                async with asyncio.timeout_at(turn.deadline):
                    async for event in turn.agent.events(
                        turn.history, turn.message, stream=True, used=spend.used
                    ):
                        if event["type"] == "reply":
                            final = event
                            continue
                        if event["type"] == "tool_call":
                            calls.append({"name": event["name"], "arguments": event["arguments"]})
                        elif event["type"] == "tool_result" and calls:
                            calls[-1]["result"] = event["result"]
                        yield _sse(event.pop("type"), event)
                    own = {
                        "session_id": turn.session_id,
                        "reply": final["content"],
                        "steps": final["steps"],
                        "stop_reason": final["stop_reason"],
                        "tool_calls": calls,
                        "usage": await turn.settle(spend),
                    }
                    answer = await turn.save(own)
        except ApiError as err:
            outcome = err.reason
            yield _sse("error", {"error": err.reason, "message": err.message})
            return
        except ModelError as err:
            outcome = "model-unavailable"
            yield _sse("error", {"error": "model-unavailable", "message": str(err)})
            return
        except Exception:
            outcome = "internal"
            log.exception("streamed turn failed")
            yield _sse("error", {"error": "internal", "message": "internal error"})
            return
        outcome = "ok" if answer is own else "replayed"
        usage = answer.get("usage")
        yield _sse("reply", _reply_event(answer))
    finally:
        if spend is not None:
            settled = await turn.settle(spend)  # also when the client left mid-stream
            usage = usage or settled
        turn.count(outcome)
        tracing.end_turn(span, turn.session_id, outcome, usage)
        span.end()


@contextlib.contextmanager
def _turn_timeout() -> Iterator[None]:
    """A turn past its deadline (or a model call past its own) is a 504."""
    try:
        yield
    except (TimeoutError, ModelTimeout) as err:
        raise _timeout_error(err) from None


def _json(answer: ChatResponse, headers: dict[str, str] | None = None) -> Response:
    return Response(
        answer.model_dump_json(exclude_none=True), media_type="application/json", headers=headers
    )


def _reply_event(answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "session_id": answer["session_id"],
        "content": answer["reply"],
        "steps": answer["steps"],
        "stop_reason": answer["stop_reason"],
        "usage": answer.get("usage") or {"input_tokens": 0, "output_tokens": 0},
    }


def _digest(message: str) -> str:
    return hashlib.sha256(message.encode()).hexdigest()[:32]


def _timeout_error(err: Exception) -> ApiError:
    if isinstance(err, ModelTimeout):
        return ApiError(504, "model-timeout", "a model call exceeded AGENT_MODEL_TIMEOUT_S")
    return ApiError(504, "turn-timeout", "the turn exceeded AGENT_REQUEST_TIMEOUT_S")


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
