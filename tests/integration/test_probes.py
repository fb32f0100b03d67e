"""Liveness and readiness are different questions, asked of a real process and a real Redis."""

from __future__ import annotations

import httpx

from tests.integration.conftest import SECRET, Redis, wait_until


def _reason(response: httpx.Response) -> str | None:
    return response.json().get("reason")


def test_readyz_is_503_while_starting_and_healthz_is_200(
    start_service, redis_server: Redis
) -> None:
    redis_server.stop()  # the store is down before the service starts: it cannot warm up
    service = start_service(AGENT_SESSION_URL=redis_server.url)
    service.wait_healthy()
    ready = httpx.get(service.url + "/readyz")
    assert ready.status_code == 503
    assert _reason(ready) == "starting"
    chat = httpx.post(service.url + "/v1/chat", json={"message": "hi"})
    assert chat.status_code == 503
    assert chat.json()["error"] == "starting"
    redis_server.start()
    service.wait_ready()


def test_redis_down_after_warm_up_keeps_readiness_and_answers_503_and_recovers(
    start_service, redis_server: Redis
) -> None:
    service = start_service(AGENT_SESSION_URL=redis_server.url)
    service.wait_ready()
    assert httpx.post(service.url + "/v1/chat", json={"message": "hi"}).status_code == 200
    assert "agent_store_up 1.0" in httpx.get(service.url + "/metrics").text

    redis_server.stop()
    assert httpx.get(service.url + "/healthz").status_code == 200
    chat = httpx.post(service.url + "/v1/chat", json={"message": "hi"}, timeout=10)
    assert chat.status_code == 503
    assert chat.json()["error"] == "store-unavailable"
    assert chat.headers["retry-after"] == "1"
    session = httpx.get(service.url + "/v1/sessions/abc", timeout=10)
    assert session.status_code == 503
    assert session.json()["error"] == "store-unavailable"
    ready = httpx.get(service.url + "/readyz", timeout=10)
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "store": "down"})
    assert "agent_store_up 0.0" in httpx.get(service.url + "/metrics").text

    redis_server.start()
    wait_until(
        lambda: httpx.get(service.url + "/readyz").json().get("store") == "up",
        10,
        "the store to be seen up again",
    )
    assert httpx.post(service.url + "/v1/chat", json={"message": "hi"}).status_code == 200
    metrics = httpx.get(service.url + "/metrics").text
    assert 'agent_store_errors_total{operation="read"}' in metrics
    assert 'agent_turns_total{mode="whole",outcome="store-unavailable"} 1.0' in metrics
    assert "agent_store_up 1.0" in metrics
    assert SECRET not in metrics


def test_with_readiness_store_always_redis_down_fails_readiness_and_recovers(
    start_service, redis_server: Redis
) -> None:
    service = start_service(AGENT_SESSION_URL=redis_server.url, AGENT_READINESS_STORE="always")
    service.wait_ready()
    redis_server.stop()
    ready = httpx.get(service.url + "/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json() == {"status": "not-ready", "reason": "store-unavailable", "store": "down"}
    assert httpx.get(service.url + "/healthz").status_code == 200
    redis_server.start()
    service.wait_ready()


def test_readyz_is_503_while_draining_but_requests_are_served(
    start_service, redis_server: Redis
) -> None:
    service = start_service(AGENT_SESSION_URL=redis_server.url, AGENT_DRAIN_DELAY_S="3")
    service.wait_ready()
    service.terminate()
    wait_until(
        lambda: httpx.get(service.url + "/readyz").status_code == 503, 10, "readiness to fail"
    )
    assert _reason(httpx.get(service.url + "/readyz")) == "draining"
    assert httpx.get(service.url + "/healthz").status_code == 200
    chat = httpx.post(service.url + "/v1/chat", json={"message": "still there?"})
    assert chat.status_code == 200
    assert service.wait_exit() == 0
    assert '"draining' in service.output()
