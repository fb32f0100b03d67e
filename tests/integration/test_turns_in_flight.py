"""agent_turns_in_flight: the turns a pod is serving, streams included, summed over its workers."""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.integration.conftest import Redis, Service

_GAUGE = re.compile(r"^agent_turns_in_flight (\S+)$", re.MULTILINE)
WHOLE = 6
STREAMS = 4


async def _gauge(client: httpx.AsyncClient, service: Service) -> float:
    match = _GAUGE.search((await client.get(service.url + "/metrics")).text)
    assert match is not None, "agent_turns_in_flight is missing from /metrics"
    return float(match.group(1))


def test_whole_and_streamed_turns_are_counted_across_two_workers_until_they_end(
    start_service, redis_server: Redis
) -> None:
    # Each model call takes 1.5 s; "calc" makes a turn call the model twice.
    service = start_service(
        AGENT_SESSION_URL=redis_server.url, AGENT_ECHO_LATENCY_MS="1500", AGENT_WORKERS="2"
    )
    service.wait_ready()

    async def scenario() -> tuple[list[float], list[int], list[str], float]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            assert await _gauge(client, service) == 0
            streams_started = asyncio.Event()
            started = 0

            async def stream(i: int) -> str:
                nonlocal started
                body = {"message": f"calc {i}+1"}
                async with client.stream("POST", service.url + "/v1/chat/stream", json=body) as r:
                    text = ""
                    async for chunk in r.aiter_text():
                        if not text:
                            started += 1
                            if started == STREAMS:
                                streams_started.set()
                        text += chunk
                    return text

            whole = [
                asyncio.create_task(
                    client.post(service.url + "/v1/chat", json={"message": f"calc {i}*2"})
                )
                for i in range(WHOLE)
            ]
            streams = [asyncio.create_task(stream(i)) for i in range(STREAMS)]
            # Every stream has sent its first event: all turns are under way, none can be over
            # (each needs two 1.5 s model calls).
            await asyncio.wait_for(streams_started.wait(), 20)
            # Several scrapes, so several workers answer: each reports the sum of both.
            during = [await _gauge(client, service) for _ in range(6)]
            statuses = [(await t).status_code for t in whole]
            texts = [await t for t in streams]
            after = await _gauge(client, service)
            return during, statuses, texts, after

    during, statuses, texts, after = asyncio.run(scenario())
    assert statuses == [200] * WHOLE
    assert all("event: reply" in text for text in texts)
    assert during == [WHOLE + STREAMS] * len(during), during
    assert after == 0
