"""A stalled or stopped Redis, against real service processes (and HAProxy checking /readyz).

Every request that needs the store ends within its documented bound (AGENT_STORE_TIMEOUT_S per
store call, 1 s by default; a turn within AGENT_REQUEST_TIMEOUT_S) with a 503
`store-unavailable` and `Retry-After`; replicas stay in the load balancer; turns succeed again
once Redis is back. Bounds are asserted generously: they are upper limits, not latencies.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, require_binary
from tests.integration.conftest import Redis, haproxy_config, wait_until

REQUEST_TIMEOUT_S = 3.0
# AGENT_STORE_TIMEOUT_S (1 s) plus generous room for a loaded CI machine.
STORE_BOUND_S = 2.5


def _timed(call) -> tuple[httpx.Response, float]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def _store_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "store-unavailable"
    assert response.headers["retry-after"] == "1"


def test_every_request_against_a_stalled_redis_ends_within_its_bound(
    start_service, redis_server: Redis
) -> None:
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    service = start_service(
        AGENT_SESSION_URL=redis_server.url,
        AGENT_REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S),
        AGENT_MODEL_TIMEOUT_S="2",
        AGENT_ECHO_LATENCY_MS="800",
    )
    service.wait_ready()
    assert httpx.post(
        service.url + "/v1/chat", json={"session_id": "s", "message": "hi"}
    ).is_success
    with httpx.Client(base_url=service.url, timeout=30) as client:
        try:
            # A turn already in the model when Redis stalls: its write is what waits.
            in_model: dict[str, tuple[httpx.Response, float]] = {}
            turn = threading.Thread(
                target=lambda: in_model.update(
                    r=_timed(
                        lambda: client.post("/v1/chat", json={"session_id": "s", "message": "x"})
                    )
                )
            )
            turn.start()
            time.sleep(0.3)  # the stimulus: inside the 800 ms model call
            os.kill(pid, signal.SIGSTOP)
            turn.join(timeout=30)
            response, took = in_model["r"]
            _store_unavailable(response)
            assert took < REQUEST_TIMEOUT_S + 0.5

            response, took = _timed(lambda: client.post("/v1/chat", json={"message": "hi"}))
            _store_unavailable(response)
            assert took < STORE_BOUND_S
            response, took = _timed(lambda: client.get("/v1/sessions/s"))
            _store_unavailable(response)
            assert took < STORE_BOUND_S
            response, took = _timed(lambda: client.delete("/v1/sessions/s"))
            _store_unavailable(response)
            assert took < STORE_BOUND_S
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(
            lambda: client.post("/v1/chat", json={"message": "back"}).status_code == 200,
            15,
            "turns to succeed after Redis resumes",
            service,
        )


@pytest.fixture
def silent_store() -> Iterator[str]:
    """A TCP listener that completes handshakes (the kernel does) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    sock.close()


def test_a_session_read_from_a_store_that_never_answers_ends_within_its_bound(
    start_service, silent_store: str
) -> None:
    service = start_service(AGENT_SESSION_URL=silent_store)
    service.wait_healthy()
    response, took = _timed(lambda: httpx.get(service.url + "/v1/sessions/abc", timeout=30))
    _store_unavailable(response)
    assert took < STORE_BOUND_S
    ready = httpx.get(service.url + "/readyz")
    assert ready.json() == {"status": "not-ready", "reason": "starting", "store": "down"}


def test_a_streamed_turn_whose_client_disconnects_is_not_stored(
    start_service, redis_server: Redis
) -> None:
    service = start_service(
        AGENT_SESSION_URL=redis_server.url, AGENT_ECHO_LATENCY_MS="200", AGENT_MAX_STEPS="20"
    )
    service.wait_ready()
    with httpx.stream(
        "POST", service.url + "/v1/chat/stream", json={"session_id": "gone", "message": "loop"}
    ) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "event: session"
        assert next(lines) == 'data: {"session_id":"gone"}'
    # The counter says the turn has ended (as client-gone); only then is absence meaningful.
    wait_until(
        lambda: (
            'agent_turns_total{mode="stream",outcome="client-gone"} 1.0'
            in httpx.get(service.url + "/metrics").text
        ),
        15,
        "the abandoned turn to end",
        service,
    )
    assert httpx.get(service.url + "/v1/sessions/gone").status_code == 404


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator:
    binary = require_binary("haproxy")
    procs: list[subprocess.Popen[bytes]] = []

    def start(backends: list[int]) -> tuple[str, str]:
        port, stats_port = free_port(), free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(port, backends, stats_port=stats_port))
        procs.append(
            subprocess.Popen(
                [binary, "-f", str(config), "-db"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        return f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats_port}/stats;csv"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def _backend_states(stats_url: str) -> dict[str, str]:
    try:
        text = httpx.get(stats_url).text
    except httpx.ConnectError:  # HAProxy still starting
        return {}
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {r["svname"]: r["status"] for r in rows if r["pxname"] == "replicas"}


def test_a_redis_outage_behind_haproxy_answers_503_fast_keeps_backends_up_and_recovers(
    start_service, redis_server: Redis, haproxy
) -> None:
    replicas = [start_service(AGENT_SESSION_URL=redis_server.url) for _ in range(2)]
    for replica in replicas:
        replica.wait_ready()
    balancer, stats = haproxy([r.port for r in replicas])
    up = {"r0": "UP", "r1": "UP", "BACKEND": "UP"}
    wait_until(lambda: _backend_states(stats) == up, 15, "both backends UP in HAProxy")
    assert httpx.post(balancer + "/v1/chat", json={"message": "before"}).status_code == 200

    redis_server.stop()
    with httpx.Client(base_url=balancer, timeout=30) as client:
        answered: list[float] = []
        outage_ends = time.monotonic() + 3.0  # several HAProxy check rounds (every 200 ms)
        while time.monotonic() < outage_ends:
            response, took = _timed(lambda: client.post("/v1/chat", json={"message": "during"}))
            _store_unavailable(response)  # never HAProxy's own 503 (no server available)
            answered.append(took)
            assert _backend_states(stats) == up
        assert len(answered) > 5
        assert max(answered) < STORE_BOUND_S
        for replica in replicas:
            ready = httpx.get(replica.url + "/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready", "store": "down"})

    redis_server.start()
    wait_until(
        lambda: httpx.post(balancer + "/v1/chat", json={"message": "after"}).status_code == 200,
        15,
        "turns to succeed after Redis returns",
    )
    # Both replicas serve again (round robin reaches each), and neither was ever restarted.
    for _ in range(4):
        assert httpx.post(balancer + "/v1/chat", json={"message": "after"}).status_code == 200
    assert _backend_states(stats) == up
    for replica in replicas:
        assert replica.proc.poll() is None
