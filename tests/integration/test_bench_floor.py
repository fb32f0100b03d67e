"""The bench's baselines are fair: per chat turn each does the service's Redis work, no less."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import free_port
from tests.integration.conftest import Redis, wait_until

FLOOR = Path(__file__).resolve().parents[2] / "hack" / "bench" / "floor.py"
# Commands of connection set-up, probes and of this test itself, not of a turn.
_NOT_TURN_WORK = ("auth", "client", "hello", "ping", "select", "info", "config")


@pytest.fixture(params=["asgi", "fastapi"])
def floor_url(redis_server: Redis, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The floor (`asgi`) or the plain FastAPI app, each as `make bench` runs it."""
    port = free_port()
    argv = [sys.executable, str(FLOOR), "--port", str(port), "--redis-url", redis_server.url]
    with (tmp_path / "floor.log").open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--framework", request.param],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "floor.log").read_text()
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, what="the floor app's /readyz")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _turn_commands(client: redis.Redis, url: str, session_id: str) -> dict[str, int]:
    """Redis commands (name → calls) that one chat turn on an existing session costs."""
    first = httpx.post(url + "/v1/chat", json={"session_id": session_id, "message": "one"})
    assert first.status_code == 200
    client.config_resetstat()
    second = httpx.post(url + "/v1/chat", json={"session_id": session_id, "message": "two"})
    assert second.status_code == 200
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if not name.removeprefix("cmdstat_").split("|")[0].startswith(_NOT_TURN_WORK)
    }


def test_the_floor_app_sends_redis_the_same_commands_per_turn_as_the_service(
    start_service, redis_server: Redis, floor_url: str
) -> None:
    service = start_service(AGENT_SESSION_URL=redis_server.url)
    service.wait_ready()
    client = redis.Redis(port=redis_server.port, password=redis_server.password)

    service_turn = _turn_commands(client, service.url, "bench-service")
    floor_turn = _turn_commands(client, floor_url, "bench-floor")

    # One read, then the idempotent append script: append, trim, turn record, expiry of 4 keys;
    # then the session totals' script: three counters and their expiry.
    assert service_turn == {
        "lrange": 1, "evalsha": 2, "hget": 1, "exists": 1, "rpush": 2, "incrby": 1,
        "ltrim": 1, "hset": 1, "expire": 5, "hincrby": 3,
    }  # fmt: skip
    assert floor_turn == service_turn


def test_the_floor_app_leaves_the_same_history_and_expiry_behind_as_the_service(
    start_service, redis_server: Redis, floor_url: str
) -> None:
    service = start_service(AGENT_SESSION_URL=redis_server.url)
    service.wait_ready()
    client = redis.Redis(port=redis_server.port, password=redis_server.password)
    for url, session_id in ((service.url, "left-by-service"), (floor_url, "left-by-floor")):
        for text in ("one", "two"):
            reply = httpx.post(url + "/v1/chat", json={"session_id": session_id, "message": text})
            assert reply.status_code == 200

    stored = {
        session_id: [json.loads(m) for m in client.lrange(f"moorage:session:{session_id}", 0, -1)]
        for session_id in ("left-by-service", "left-by-floor")
    }
    shapes = {sid: [(m["role"], sorted(m)) for m in msgs] for sid, msgs in stored.items()}
    assert shapes["left-by-floor"] == shapes["left-by-service"]
    assert [m["content"] for m in stored["left-by-floor"]] == [
        m["content"] for m in stored["left-by-service"]
    ]
    ttls = [client.ttl(f"moorage:session:{sid}") for sid in stored]
    assert all(86_000 < ttl <= 86_400 for ttl in ttls)
