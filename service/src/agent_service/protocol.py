"""uvicorn's httptools protocol with the limits it lacks: header size and count, read deadlines.

httptools buffers a header line until it ends and uvicorn sets no bound, so one unfinished
16 MiB header held 16 MiB per connection, and a client could take forever to send its headers
or body. This subclass counts bytes while the headers are incomplete and the parsed headers
(431 past `max_header_bytes` or `max_headers`), answers 408 when the headers (from the first
byte, or from the connection's start) or the body take longer than their deadlines, and answers
requests the parser rejects with JSON and a request id instead of uvicorn's text/plain 400.
uvicorn's h11 protocol bounds header bytes (`h11_max_incomplete_event_size`) but not their
count nor any deadline, answers 400 rather than 431, and costs more CPU per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from agent_service.middleware import BODY_TIMED_OUT

log = logging.getLogger("agent_service.request")


@dataclass(frozen=True)
class HttpLimits:
    """What one request may take before the app sees it."""

    max_header_bytes: int = 16_384
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0


class ServerConfig(uvicorn.Config):
    """uvicorn's config plus our limits; picklable, so spawned workers get them too."""

    def __init__(self, *args: Any, http_limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http_limits = http_limits


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools, bounded in header bytes, header count and the time to send a request."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        limits = getattr(config, "http_limits", None)
        self.limits = limits if isinstance(limits, HttpLimits) else HttpLimits()
        self._in_headers = True  # headers of the next (or current) request not complete yet
        self._header_bytes = 0  # bytes received while in headers
        self._parsed_bytes = 0
        self._header_count = 0
        self._deadline: asyncio.TimerHandle | None = None

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that sends nothing at all is bounded too.
        self._arm(self.limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # As uvicorn does; without a websocket library the request is served as plain HTTP.
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as err:
            if isinstance(err.__context__, _HeadersTooLarge) or isinstance(
                err.__cause__, _HeadersTooLarge
            ):
                self._reject(431, "headers-too-large", self._too_large_message())
            else:
                self._reject(400, "bad-request", "the request is not valid HTTP/1.1")
            return
        if self._in_headers:
            # httptools keeps an unfinished header line in memory: bound what it can hold.
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._reject(431, "headers-too-large", self._too_large_message())

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._parsed_bytes = 0
        self._header_count = 0
        self._arm(self.limits.header_timeout_s, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url)
        if self._parsed_bytes > self.limits.max_header_bytes:
            raise _HeadersTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._parsed_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if (
            self._header_count > self.limits.max_headers
            or self._parsed_bytes > self.limits.max_header_bytes
        ):
            raise _HeadersTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        self._arm(self.limits.body_timeout_s, self._body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # Deadlines

    def _arm(self, delay_s: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_timeout(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._header_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # an idle connection: nothing to answer
            return
        self._reject(408, "request-timeout", "the request headers took too long to arrive")

    def _body_timeout(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None:
            return
        if cycle.response_started:
            self.transport.close()  # answered already; the rest of the body is not waited for
            return
        cycle.scope["state"][BODY_TIMED_OUT] = True
        self._reject(408, "request-timeout", "the request body took too long to arrive")

    # Answers

    def _too_large_message(self) -> str:
        limits = self.limits
        return (
            f"request headers exceed {limits.max_header_bytes} bytes or {limits.max_headers} fields"
        )

    def send_400_response(self, msg: str) -> None:
        self._reject(400, "bad-request", msg)

    def _reject(self, status: int, reason: str, message: str) -> None:
        """Answer a request the app never sees (JSON, with a request id) and close."""
        self._disarm()
        request_id = uuid.uuid4().hex
        log.warning(
            "request rejected",
            extra={
                "request_id": request_id,
                "status": status,
                "reason": reason,
                "client": f"{self.client[0]}:{self.client[1]}" if self.client else None,
            },
        )
        body = json.dumps({"error": reason, "message": message}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
            b"connection: close\r\n\r\n" % (len(body), request_id.encode())
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        self._in_headers = False
