"""Several worker processes: they serve together and drain together on SIGTERM."""

from __future__ import annotations

import httpx

from tests.integration.conftest import Redis, wait_until


def test_two_workers_serve_and_drain_to_exit_0(start_service, redis_server: Redis) -> None:
    service = start_service(
        AGENT_SESSION_URL=redis_server.url, AGENT_WORKERS="2", AGENT_DRAIN_DELAY_S="1"
    )
    service.wait_ready()
    with httpx.Client(base_url=service.url) as client:
        for i in range(20):
            assert client.post("/v1/chat", json={"session_id": "w", "message": f"{i}"}).is_success
        assert len(client.get("/v1/sessions/w").json()["messages"]) == 40
        # Whichever worker answers the scrape, it reports the turns of both.
        for _ in range(6):
            metrics = client.get("/metrics").text
            assert (
                'agent_http_requests_total{method="POST",route="/v1/chat",status="200"} 20.0'
                in metrics
            )
    service.terminate()
    # Each worker fails readiness while it keeps serving; then all stop and the parent exits 0.
    wait_until(lambda: httpx.get(service.url + "/readyz").status_code == 503, 10, "draining")
    assert service.wait_exit() == 0
    assert service.output().count("drain delay over") == 2
