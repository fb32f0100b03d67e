"""The hot routes served without FastAPI's per-request machinery, with the same behaviour.

Measured by `make bench`, FastAPI's dependency solving, body handling, routing and response
validation cost more CPU per chat turn than the turn's own Redis work. For `POST /v1/chat` with a
body that validates, this module does FastAPI's part by hand and calls the very dependency and
endpoint functions the route declares; every other request, including every invalid body (so
every validation error keeps FastAPI's exact shape), goes to the app as before. The routes stay
declared in FastAPI too, for the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_service.errors import ApiError, api_error_response
from agent_service.routes.chat import REPLAYED_HEADER, begin_turn, chat
from agent_service.schemas import ChatRequest

Handler = Callable[[Scope, Receive, Send, ASGIApp], Awaitable[None]]

_JSON = b"application/json"
_HEALTHZ = b'{"status":"ok"}'
_REPLAYED = REPLAYED_HEADER.lower().encode()


@dataclass(frozen=True)
class _Route:
    """Stands in for the matched route in `scope["route"]`, which metrics label by path."""

    path: str


_CHAT_ROUTE = _Route("/v1/chat")
_HEALTHZ_ROUTE = _Route("/healthz")


async def serve_chat(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    """One chat turn; an invalid body or a non-JSON content type is the app's to answer."""
    scope["route"] = _CHAT_ROUTE
    try:
        body = await _read_body(receive)
    except ApiError as err:  # the shell's body limit, counted while the body arrives
        await api_error_response(err)(scope, receive, send)
        return
    if body is None:
        return  # the client went away before sending its whole body: nobody to answer
    payload = _parse(scope, body)
    if payload is None:
        await app(scope, _replay(body, receive), send)
        return
    request = Request(scope, receive)
    state = scope["state"]
    response = Response()
    try:
        turn = await begin_turn(
            payload,
            request,
            state["settings"],
            state["store"],
            state["agent"],
            state["lifecycle"],
            state["metrics"],
            _header(scope, b"idempotency-key"),
        )
        answer = await chat(turn, request, response)
    except ApiError as err:
        await api_error_response(err)(scope, receive, send)
        return
    extra = [(k, v) for k, v in response.raw_headers if k == _REPLAYED]
    await _send_json(send, 200, answer.model_dump_json(by_alias=True).encode(), extra)


async def serve_healthz(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    """Liveness: the process serves. Touches nothing downstream."""
    scope["route"] = _HEALTHZ_ROUTE
    await _send_json(send, 200, _HEALTHZ)


ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/chat"): serve_chat,
    ("GET", "/healthz"): serve_healthz,
}


def _header(scope: Scope, name: bytes) -> str | None:
    """A request header's value as FastAPI's `Header()` gives it (latin-1), or None."""
    value = next((v for k, v in scope["headers"] if k == name), None)
    return None if value is None else bytes(value).decode("latin-1")


def _parse(scope: Scope, body: bytes) -> ChatRequest | None:
    """The validated body, or None when FastAPI should answer (and explain) instead."""
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    if content_type.split(b";", 1)[0].strip().lower() != _JSON:
        return None
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError:
        return None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client disconnected first."""
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out the body already read, then whatever the server sends next."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", _JSON)]
    headers.extend(extra or ())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
