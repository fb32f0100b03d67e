"""What a client sends before the app sees it is bounded, against a real service process.

Raw sockets, because an HTTP client library refuses to send what an attacker sends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path

import httpx

from tests.integration.conftest import wait_until

READ_TIMEOUT_S = 30  # generous: a fixed upper bound, never a measured duration


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S)
    sock.settimeout(READ_TIMEOUT_S)
    return sock


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read until the server closes; status, headers and body of its answer."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65_536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _send_all(sock: socket.socket, data: bytes) -> None:
    # The server may answer and close before it has read everything: that is the point.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def _assert_json_error(status: int, headers: dict[str, str], body: bytes, want: int) -> str:
    assert status == want, body
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"]
    return str(json.loads(body)["error"])


def test_oversized_or_too_many_headers_are_431_as_json_with_a_request_id(start_service) -> None:
    service = start_service()
    service.wait_ready()
    cases = {
        "one 1 MiB header": b"X-Big: " + b"a" * (1 << 20) + b"\r\n",
        "one 32 KiB header": b"X-Big: " + b"a" * 32_768 + b"\r\n",
        "10,000 headers": b"".join(b"X-%d: v\r\n" % i for i in range(10_000)),
        "200 headers": b"".join(b"X-%d: v\r\n" % i for i in range(200)),
    }
    for what, headers in cases.items():
        with _connect(service.port) as sock:
            _send_all(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
            status, got, body = _response(sock)
        assert _assert_json_error(status, got, body, 431) == "headers-too-large", what
    assert httpx.get(service.url + "/healthz").status_code == 200


def test_a_request_the_parser_rejects_is_a_json_400_with_a_request_id(start_service) -> None:
    service = start_service()
    service.wait_ready()
    with _connect(service.port) as sock:
        _send_all(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        status, headers, body = _response(sock)
    assert _assert_json_error(status, headers, body, 400) == "bad-request"


def test_headers_or_a_body_sent_too_slowly_get_408_and_the_connection_closes(
    start_service,
) -> None:
    service = start_service(AGENT_HEADER_TIMEOUT_S="1", AGENT_BODY_TIMEOUT_S="1")
    service.wait_ready()
    with _connect(service.port) as sock:
        _send_all(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and nothing more
        status, headers, body = _response(sock)
    assert _assert_json_error(status, headers, body, 408) == "request-timeout"

    with _connect(service.port) as sock:
        head = b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        _send_all(sock, head + b'Content-Length: 100\r\n\r\n{"message":')
        status, headers, body = _response(sock)
    assert _assert_json_error(status, headers, body, 408) == "request-timeout"
    metrics = httpx.get(service.url + "/metrics").text
    assert 'route="/v1/chat",status="408"' in metrics

    with _connect(service.port) as sock:  # a connection that never sends a byte is closed too
        assert sock.recv(1) == b""


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_unfinished_huge_headers_do_not_grow_the_process(start_service) -> None:
    # Before the limit: 8 connections each holding an unfinished 16 MiB header took RSS from
    # 76 to 231 MiB. Now each is answered 431 after 16 KiB and closed.
    service = start_service()
    service.wait_ready()
    for _ in range(20):  # settle the allocator with ordinary traffic first
        httpx.post(service.url + "/v1/chat", json={"message": "warm"})
    before = _rss_kib(service.proc.pid)
    chunk = b"a" * (1 << 20)

    def attack() -> None:
        with _connect(service.port) as sock:
            _send_all(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(16):
                try:
                    sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break

    threads = [threading.Thread(target=attack) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    after = _rss_kib(service.proc.pid)
    logging.getLogger(__name__).warning(
        f"RSS before {before / 1024:.1f} MiB, after 8 x 16 MiB headers {after / 1024:.1f} MiB"
    )
    assert after - before < 24 * 1024, (before, after)


def test_a_turn_still_running_when_the_shutdown_budget_ends_gets_a_json_503(
    start_service,
) -> None:
    service = start_service(
        AGENT_ECHO_LATENCY_MS="200",
        AGENT_MAX_STEPS="60",
        AGENT_REQUEST_TIMEOUT_S="60",
        AGENT_DRAIN_DELAY_S="0",
        AGENT_SHUTDOWN_TIMEOUT_S="1",
    )
    service.wait_ready()
    answer: dict[str, httpx.Response] = {}

    def long_turn() -> None:  # 60 steps x 200 ms: longer than the 1 s budget
        answer["r"] = httpx.post(
            service.url + "/v1/chat", json={"message": "loop"}, timeout=READ_TIMEOUT_S
        )

    thread = threading.Thread(target=long_turn)
    thread.start()

    def in_flight() -> bool:  # /metrics counts itself: 2 means the turn is running
        text = httpx.get(service.url + "/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("agent_http_requests_in_flight"))
        return float(line.split()[-1]) >= 2

    wait_until(in_flight, 15, "the turn to be in flight", service)
    os.kill(service.proc.pid, signal.SIGTERM)
    thread.join(timeout=READ_TIMEOUT_S)
    assert service.wait_exit(timeout=30) == 0
    response = answer["r"]
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    assert response.json()["error"] == "shutting-down"
    lines = [json.loads(x) for x in service.output().splitlines() if x.startswith("{")]
    assert not [x for x in lines if x["level"] in ("error", "critical")], lines
    assert "Traceback" not in service.output()
    assert any(x["msg"] == "request cancelled: the shutdown budget ended" for x in lines)


def test_a_stream_still_running_when_the_shutdown_budget_ends_ends_with_an_error_event(
    start_service,
) -> None:
    service = start_service(
        AGENT_ECHO_LATENCY_MS="200",
        AGENT_MAX_STEPS="60",
        AGENT_REQUEST_TIMEOUT_S="60",
        AGENT_DRAIN_DELAY_S="0",
        AGENT_SHUTDOWN_TIMEOUT_S="1",
    )
    service.wait_ready()
    with httpx.stream(
        "POST", service.url + "/v1/chat/stream", json={"message": "loop"}, timeout=READ_TIMEOUT_S
    ) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "event: session"  # the turn is under way
        os.kill(service.proc.pid, signal.SIGTERM)
        events = [line for line in lines if line.startswith(("event: ", "data: "))]
    assert events[-2:][0] == "event: error"
    assert json.loads(events[-1].removeprefix("data: "))["error"] == "shutting-down"
    assert service.wait_exit(timeout=30) == 0
    assert "Traceback" not in service.output()
