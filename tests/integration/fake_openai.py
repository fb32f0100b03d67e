"""A stand-in for a paid model API: speaks the OpenAI chat completions protocol over real HTTP.

It plays a script of responses, one per call, and records every request it received.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def completion(content: str | None = None, tool_calls: list[dict[str, Any]] | None = None) -> dict:
    """A chat completion body as the API returns it."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


def tool_call(name: str, arguments: str, call_id: str = "call_1") -> dict[str, Any]:
    """One tool call in the API's format (arguments are a JSON string)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


@dataclass
class Step:
    """One scripted answer: a status with a JSON body (or `raw` bytes), after an optional delay."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw: bytes | None = None


@dataclass
class FakeOpenAI:
    """The fake server: `script` is consumed one step per request; the last step repeats."""

    port: int
    script: list[Step] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _completions(self, request: Request) -> Response:
        self.received.append(
            {"authorization": request.headers.get("authorization"), "body": await request.json()}
        )
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if step.delay_s:
            await asyncio.sleep(step.delay_s)
        if step.raw is not None:
            return Response(step.raw, step.status, step.headers, media_type="application/json")
        return JSONResponse(
            step.body or {"error": {"message": "scripted"}}, step.status, step.headers
        )

    def start(self) -> None:
        app = Starlette(routes=[Route("/v1/chat/completions", self._completions, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "fake OpenAI server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        assert self._server is not None
        assert self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)
