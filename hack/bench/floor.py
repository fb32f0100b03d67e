"""The baselines: apps doing the Redis work of one chat turn, and nothing else.

Per turn they read the history (LRANGE of the last `--context` messages, decoded), wait the
model's latency, then store the turn with the service's own idempotent append script (append,
trim, turn record, TTL; agent_service.store) and add its usage to the session's totals (the
service's record script, agent_service.budgets), with the same client library and options.
No metrics, logs, request ids or error mapping: what the service costs above them is the shell.

`--framework asgi` (the floor) is the smallest ASGI callable that can do this. `--framework
fastapi` is the same work written as a plain FastAPI app would be (a pydantic body, a
`response_model`, the client as a dependency): what the framework costs with nothing of ours.
Both run under the same uvicorn settings as `agent_service.server.serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis.asyncio as aioredis
import uvicorn
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel
from pydantic_core import from_json, to_json
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from agent_service.budgets import RECORD_SCRIPT, session_budget_keys
from agent_service.store import APPEND_SCRIPT, session_keys, session_tag

MAX_MESSAGES = 1000  # AGENT_MAX_HISTORY_MESSAGES' default; the service keeps half as many turn ids
_JSON = [(b"content-type", b"application/json")]


class TurnWork:
    """One Redis client per process, opened by the lifespan, and the work of one turn."""

    def __init__(self, redis_url: str, ttl_s: int, context: int, latency_s: float) -> None:
        self.redis_url = redis_url
        self.ttl_s = ttl_s
        self.context = context
        self.latency_s = latency_s
        self.redis: aioredis.Redis | None = None
        self.append: Any = None  # the registered append script, once connected
        self.record: Any = None  # and the session totals' script

    async def open(self) -> None:
        # The service's RedisStore client options: same library, same per-command cost.
        # Its pool is just big enough for the bench's 256 connections: redis-py's default
        # of 100 fails a burst, and guarding that (as the service does) is shell work.
        self.redis = aioredis.Redis.from_url(
            self.redis_url,
            max_connections=512,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
            health_check_interval=15,
            decode_responses=False,
        )
        self.append = self.redis.register_script(APPEND_SCRIPT)
        self.record = self.redis.register_script(RECORD_SCRIPT)
        await self.redis.ping()

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    async def turn(self, session_id: str | None, message: str) -> dict[str, Any]:
        """Read the history, wait for the "model", store both messages; the answer."""
        assert self.redis is not None
        session_id = session_id or secrets.token_urlsafe(16)
        keys = session_keys(session_id)
        raw = await self.redis.lrange(keys[0], -self.context, -1)
        history = [from_json(item) for item in raw]  # decoded as the service decodes it
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        reply = f"echo: {message}"
        now = time.time()
        # The echo model's usage: words of the prompt (history read + message) and of the reply.
        prompt = sum(len(str(m.get("content") or "").split()) for m in history)
        usage = {"input_tokens": prompt + len(message.split()), "output_tokens": len(reply.split())}
        messages = [
            to_json({"role": "user", "content": message, "ts": now}),
            to_json({"role": "assistant", "content": reply, "ts": now, "steps": 1, "usage": usage}),
        ]
        turn_id = secrets.token_urlsafe(16)
        args = [turn_id, "", self.ttl_s, MAX_MESSAGES, MAX_MESSAGES // 2, *messages]
        await self.append(keys=keys, args=args)
        totals = session_budget_keys(session_tag(session_id))[:1]
        await self.record(
            keys=totals, args=[usage["input_tokens"], usage["output_tokens"], self.ttl_s]
        )
        return {"session_id": session_id, "reply": reply, "steps": 1, "history": len(history)}


class Floor:
    """The floor app: a bare ASGI callable."""

    def __init__(self, work: TurnWork) -> None:
        self.work = work

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["path"] == "/v1/chat" and scope["method"] == "POST":
            await self._chat(receive, send)
        elif scope["path"] in ("/healthz", "/readyz"):
            await _respond(send, 200, b'{"status":"ok"}')
        else:
            await _respond(send, 404, b'{"error":"not-found"}')

    async def _chat(self, receive: Any, send: Any) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = json.loads(body)
        answer = await self.work.turn(request.get("session_id"), request["message"])
        await _respond(send, 200, json.dumps(answer).encode())

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.work.open()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.work.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


class Turn(BaseModel):
    """The plain FastAPI app's request body."""

    session_id: str | None = None
    message: str


class Answer(BaseModel):
    """The plain FastAPI app's answer."""

    session_id: str
    reply: str
    steps: int
    history: int


async def turn_work(request: Request) -> TurnWork:
    """The plain FastAPI app's client, as a dependency."""
    work: TurnWork = request.app.state.work
    return work


WorkDep = Annotated[TurnWork, Depends(turn_work)]


def plain_fastapi(work: TurnWork) -> FastAPI:
    """The same turn as a plain FastAPI app: what FastAPI's tutorial would have one write."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await work.open()
        yield
        await work.close()

    app = FastAPI(lifespan=lifespan)
    app.state.work = work

    @app.post("/v1/chat", response_model=Answer)
    async def chat(turn: Turn, work: WorkDep) -> Answer:
        return Answer(**await work.turn(turn.session_id, turn.message))

    @app.get("/healthz")
    @app.get("/readyz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _respond(send: Any, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """Serve a baseline app on loopback with the service's uvicorn settings."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--ttl-s", type=int, default=86_400)
    parser.add_argument("--context", type=int, default=40)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--framework", choices=("asgi", "fastapi"), default="asgi")
    args = parser.parse_args()
    work = TurnWork(args.redis_url, args.ttl_s, args.context, args.latency_ms / 1000)
    app = Floor(work) if args.framework == "asgi" else plain_fastapi(work)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
