"""Any replica serves any request: two processes share one Redis and nothing else."""

from __future__ import annotations

import asyncio

import httpx

from tests.integration.conftest import Redis


def test_a_conversation_alternating_between_replicas_keeps_its_whole_history(
    start_service, redis_server: Redis
) -> None:
    a = start_service(AGENT_SESSION_URL=redis_server.url)
    b = start_service(AGENT_SESSION_URL=redis_server.url)
    a.wait_ready()
    b.wait_ready()
    first = httpx.post(a.url + "/v1/chat", json={"message": "turn 0"}).json()
    session_id = first["session_id"]
    for turn in range(1, 6):
        replica = (a, b)[turn % 2]
        reply = httpx.post(
            replica.url + "/v1/chat", json={"session_id": session_id, "message": f"turn {turn}"}
        )
        assert reply.status_code == 200
        assert reply.json()["reply"] == f"echo: turn {turn}"
    for replica in (a, b):
        history = httpx.get(f"{replica.url}/v1/sessions/{session_id}").json()["messages"]
        assert [m["content"] for m in history if m["role"] == "user"] == [
            f"turn {t}" for t in range(6)
        ]
        assert [m["role"] for m in history] == ["user", "assistant"] * 6


def test_concurrent_turns_on_one_session_across_replicas_lose_no_message(
    start_service, redis_server: Redis
) -> None:
    replicas = [start_service(AGENT_SESSION_URL=redis_server.url) for _ in range(2)]
    for replica in replicas:
        replica.wait_ready()
    session_id = "shared-session-1"

    async def turns() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            return [
                r.status_code
                for r in await asyncio.gather(
                    *(
                        client.post(
                            replicas[i % 2].url + "/v1/chat",
                            json={"session_id": session_id, "message": f"m{i}"},
                        )
                        for i in range(50)
                    )
                )
            ]

    assert asyncio.run(turns()) == [200] * 50
    history = httpx.get(f"{replicas[1].url}/v1/sessions/{session_id}").json()["messages"]
    assert len(history) == 100
    assert sorted(m["content"] for m in history if m["role"] == "user") == sorted(
        f"m{i}" for i in range(50)
    )
    # Each turn's pair is written atomically, so every question is followed by its answer.
    for question, answer in zip(history[::2], history[1::2], strict=True):
        assert answer["content"] == f"echo: {question['content']}"


def test_one_idempotency_key_sent_to_both_replicas_at_once_stores_one_turn(
    start_service, redis_server: Redis
) -> None:
    replicas = [start_service(AGENT_SESSION_URL=redis_server.url) for _ in range(2)]
    for replica in replicas:
        replica.wait_ready()
    body = {"session_id": "retried", "message": "time"}

    async def repeats() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            replicas[i % 2].url + "/v1/chat",
                            json=body,
                            headers={"Idempotency-Key": "same-key"},
                        )
                        for i in range(20)
                    )
                )
            )

    responses = asyncio.run(repeats())
    assert [r.status_code for r in responses] == [200] * 20
    # Whichever replica stored first, every other answer is that stored one, marked replayed.
    assert len({r.json()["reply"] for r in responses}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) <= 1
    history = httpx.get(f"{replicas[0].url}/v1/sessions/retried").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"]
