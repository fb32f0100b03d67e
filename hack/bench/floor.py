"""The floor: the smallest ASGI app doing the Redis work of one chat turn, and nothing else.

It reads the history (LRANGE of the last `--context` messages, decoded), waits the model's latency,
then stores the turn with the service's own idempotent append script (append, trim, turn record,
TTL; agent_service.store), with the same client library and client options. No validation,
metrics, logs, request ids or error mapping: what the service costs above this is the shell.
It runs under the same uvicorn settings as `agent_service.server.serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from agent_service.store import APPEND_SCRIPT, session_keys

MAX_MESSAGES = 1000  # AGENT_MAX_HISTORY_MESSAGES' default; the service keeps half as many turn ids
_JSON = [(b"content-type", b"application/json")]
_COMPACT: dict[str, Any] = {"separators": (",", ":")}


class Floor:
    """The floor app; one Redis client per process, opened by the lifespan."""

    def __init__(self, redis_url: str, ttl_s: int, context: int, latency_s: float) -> None:
        self.redis_url = redis_url
        self.ttl_s = ttl_s
        self.context = context
        self.latency_s = latency_s
        self.redis: aioredis.Redis | None = None
        self.append: Any = None  # the registered append script, once connected

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
        assert self.redis is not None
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = json.loads(body)
        session_id = request.get("session_id") or secrets.token_urlsafe(16)
        keys = session_keys(session_id)
        history = [json.loads(item) for item in await self.redis.lrange(keys[0], -self.context, -1)]
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        reply = f"echo: {request['message']}"
        now = time.time()
        messages = [
            json.dumps({"role": "user", "content": request["message"], "ts": now}, **_COMPACT),
            json.dumps({"role": "assistant", "content": reply, "ts": now, "steps": 1}, **_COMPACT),
        ]
        turn_id = secrets.token_urlsafe(16)
        args = [turn_id, "", self.ttl_s, MAX_MESSAGES, MAX_MESSAGES // 2, *messages]
        await self.append(keys=keys, args=args)
        answer = {"session_id": session_id, "reply": reply, "steps": 1, "history": len(history)}
        await _respond(send, 200, json.dumps(answer).encode())

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
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
                await self.redis.ping()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.redis is not None:
                    await self.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _respond(send: Any, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """Serve the floor app on loopback with the service's uvicorn settings."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--ttl-s", type=int, default=86_400)
    parser.add_argument("--context", type=int, default=40)
    parser.add_argument("--latency-ms", type=int, default=0)
    args = parser.parse_args()
    app = Floor(args.redis_url, args.ttl_s, args.context, args.latency_ms / 1000)
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
