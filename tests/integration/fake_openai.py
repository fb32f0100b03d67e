"""A stand-in for a paid model API: speaks the OpenAI chat completions protocol over real HTTP.

It plays a script of responses, one per call, and records every request it received. A request
with `stream: true` is answered as the API streams: `chat.completion.chunk` server-sent events
(text in pieces, tool calls by index, a last chunk with `usage` when `stream_options.include_usage`
asks for it) and `data: [DONE]`, with `chunk_delay_s` between events; `streams` records when each
event left and whether the client hung up before the end.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def completion(
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    usage: tuple[int, int] = (11, 7),
) -> dict:
    """A chat completion body as the API returns it, with `usage` (prompt, completion tokens)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake-model",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        },
    }


def _chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "fake-model",
        "choices": choices,
        "usage": usage,
    }


def stream_chunks(body: dict[str, Any], pieces: int = 0) -> list[dict[str, Any]]:
    """A completion body as the chunks a streaming API sends: text split into `pieces` parts
    (one per word when 0), tool calls with their arguments in two halves, then the finish."""
    choice = body["choices"][0]
    message = choice["message"]
    chunks = [_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])]
    text = message.get("content") or ""
    words = text.split(" ")
    parts = (
        [w + " " for w in words[:-1]] + [words[-1]]
        if not pieces
        else [text[i * len(text) // pieces : (i + 1) * len(text) // pieces] for i in range(pieces)]
    )
    chunks += [_chunk([{"index": 0, "delta": {"content": p}}]) for p in parts if p]
    for index, call in enumerate(message.get("tool_calls") or ()):
        args = call["function"]["arguments"]
        half = len(args) // 2
        head = {"index": index, "id": call["id"], "type": "function"}
        chunks.append(
            _chunk(
                [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    **head,
                                    "function": {
                                        "name": call["function"]["name"],
                                        "arguments": args[:half],
                                    },
                                }
                            ]
                        },
                    }
                ]
            )
        )
        chunks.append(
            _chunk(
                [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [{"index": index, "function": {"arguments": args[half:]}}]
                        },
                    }
                ]
            )
        )
    chunks.append(_chunk([{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]))
    chunks.append(_chunk([], body.get("usage")))
    return chunks


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
    chunk_delay_s: float = 0.0  # between streamed events


@dataclass
class Stream:
    """What happened to one streamed answer: when each event was sent, and how it ended."""

    sent_at: list[float] = field(default_factory=list)  # time.monotonic() of each event
    finished: bool = False
    disconnected: threading.Event = field(default_factory=threading.Event)


@dataclass
class FakeOpenAI:
    """The fake server: `script` is consumed one step per request; the last step repeats."""

    port: int
    script: list[Step] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)
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
        body = self.received[-1]["body"]
        if body.get("stream") and step.status == 200 and step.body and step.raw is None:
            return self._stream(step, body)
        if step.raw is not None:
            return Response(step.raw, step.status, step.headers, media_type="application/json")
        return JSONResponse(
            step.body or {"error": {"message": "scripted"}}, step.status, step.headers
        )

    def _stream(self, step: Step, request: dict[str, Any]) -> StreamingResponse:
        assert step.body is not None
        chunks = stream_chunks(step.body)
        if not (request.get("stream_options") or {}).get("include_usage"):
            chunks = [c for c in chunks if c["choices"]]
        record = Stream()
        self.streams.append(record)

        async def events():  # type: ignore[no-untyped-def]
            try:
                for chunk in chunks:
                    record.sent_at.append(time.monotonic())
                    yield f"data: {json.dumps(chunk)}\n\n"
                    await asyncio.sleep(step.chunk_delay_s)
                yield "data: [DONE]\n\n"
                record.finished = True
            finally:
                if not record.finished:
                    record.disconnected.set()

        return StreamingResponse(events(), media_type="text/event-stream")

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
