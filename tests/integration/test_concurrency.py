"""One worker overlaps many slow turns: handlers are async end to end."""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.integration.conftest import Redis

_IN_FLIGHT = re.compile(r"^agent_http_requests_in_flight (\S+)$", re.MULTILINE)


def test_a_hundred_slow_turns_overlap_on_one_worker(start_service, redis_server: Redis) -> None:
    service = start_service(
        AGENT_SESSION_URL=redis_server.url, AGENT_ECHO_LATENCY_MS="200", AGENT_WORKERS="1"
    )
    service.wait_ready()
    peak = 0.0

    async def load() -> list[int]:
        nonlocal peak
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            turns = [
                asyncio.create_task(client.post(service.url + "/v1/chat", json={"message": f"{i}"}))
                for i in range(100)
            ]
            while not all(t.done() for t in turns):
                metrics = (await client.get(service.url + "/metrics")).text
                match = _IN_FLIGHT.search(metrics)
                assert match is not None
                peak = max(peak, float(match.group(1)))
                await asyncio.sleep(0.02)
            return [t.result().status_code for t in turns]

    assert asyncio.run(load()) == [200] * 100
    # The scrape itself is one of the in-flight requests; the rest are overlapping turns.
    assert peak - 1 >= 50, f"only {peak - 1:.0f} turns were in flight at once"
