"""SIGTERM behind a real load balancer drops no request: HAProxy checks /readyz of 3 replicas."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, require_binary
from tests.integration.conftest import Redis, haproxy_config, wait_until

LOAD_SECONDS = 8.0
LOAD_CLIENTS = 4


@pytest.fixture
def haproxy_binary() -> str:
    return require_binary("haproxy")


@pytest.fixture
def haproxy(haproxy_binary: str, tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen[bytes]] = []

    def start(backends: list[int]) -> str:
        port = free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(port, backends, redispatch=True))
        procs.append(
            subprocess.Popen(
                [haproxy_binary, "-f", str(config), "-db"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_sigterm_to_one_replica_behind_haproxy_fails_no_request(
    start_service, redis_server: Redis, haproxy
) -> None:
    replicas = [
        start_service(
            AGENT_SESSION_URL=redis_server.url,
            AGENT_ECHO_LATENCY_MS="100",
            AGENT_MAX_STEPS="40",
            AGENT_DRAIN_DELAY_S="1.5",
            AGENT_SHUTDOWN_TIMEOUT_S="15",
            AGENT_REQUEST_TIMEOUT_S="15",
        )
        for _ in range(3)
    ]
    for replica in replicas:
        replica.wait_ready()
    balancer = haproxy([r.port for r in replicas])
    wait_until(lambda: _answers(balancer), 15, "HAProxy to answer")

    victim = replicas[0]
    failures: list[str] = []
    served: list[int] = []
    stop_at = time.monotonic() + LOAD_SECONDS

    def client_loop(n: int) -> None:
        with httpx.Client(base_url=balancer, timeout=20) as client:
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                try:
                    r = client.post("/v1/chat", json={"message": f"c{n}-{i}"})
                except httpx.HTTPError as err:
                    failures.append(f"{type(err).__name__}: {err}")
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text}")
                else:
                    served.append(n)

    slow: dict[str, httpx.Response] = {}

    def slow_turn() -> None:
        # 40 steps x 100 ms: still in flight when the drain delay ends and the listener closes.
        slow["response"] = httpx.post(
            victim.url + "/v1/chat",
            json={"message": "loop"},
            headers={"X-Request-ID": "slow-turn"},
            timeout=30,
        )

    clients = [threading.Thread(target=client_loop, args=(n,)) for n in range(LOAD_CLIENTS)]
    for thread in clients:
        thread.start()
    time.sleep(1.0)
    slow_thread = threading.Thread(target=slow_turn)
    slow_thread.start()
    time.sleep(0.5)
    victim.terminate()
    for thread in [*clients, slow_thread]:
        thread.join(timeout=60)

    assert failures == []
    assert len(served) > 20
    assert victim.wait_exit(timeout=30) == 0
    assert slow["response"].status_code == 200
    assert slow["response"].json()["steps"] == 40
    # It was in flight when the listener closed: its request line comes after the drain's end.
    lines = victim.output().splitlines()
    closed = next(i for i, line in enumerate(lines) if "drain delay over" in line)
    finished = next(i for i, line in enumerate(lines) if '"request_id":"slow-turn"' in line)
    assert closed < finished, "\n".join(lines[closed - 2 : finished + 2])


def _answers(balancer: str) -> bool:
    try:
        return httpx.post(balancer + "/v1/chat", json={"message": "probe"}).status_code == 200
    except httpx.HTTPError:
        return False
