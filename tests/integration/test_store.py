"""The Redis store against a real redis-server that stalls: each turn is stored at most once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import redis

from agent_service.store import KEY_PREFIX, POOL_SIZE, RedisStore, StoreUnavailable
from tests.integration.conftest import Redis, wait_until

TURNS = 40


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_turn_is_stored_once_when_redis_stalls_and_the_client_library_retries_the_write(
    redis_server: Redis,
) -> None:
    """redis-py resends a command after a socket timeout; the stalled first copy still runs.

    The store gives redis-py a socket timeout far below its own call bound, so every write sent
    while Redis is stopped (SIGSTOP) is resent on a new connection, maybe twice: on SIGCONT
    Redis runs every copy it buffered. A blind write (the old MULTI/EXEC) stores such a turn two
    or three times; the idempotent one stores it once.
    """
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    session_id = "stalled-writes"

    async def scenario() -> list[BaseException | str | None]:
        store = RedisStore(
            redis_server.url, 600, max_messages=1000, timeout_s=20, socket_timeout_s=0.25
        )
        try:
            # One pooled connection per write, open before the stall, so that each write is
            # sent (and buffered by the stopped server) before its first timeout.
            await asyncio.gather(*(store.ping() for _ in range(TURNS)))
            os.kill(pid, signal.SIGSTOP)
            wait_until(lambda: _state(pid) == "T", 5, "redis-server to stop")
            writes = [
                asyncio.ensure_future(
                    store.append(
                        session_id,
                        f"t:{i}",
                        "",
                        (
                            {"role": "user", "content": f"q{i}"},
                            {"role": "assistant", "content": f"a{i}"},
                        ),
                    )
                )
                for i in range(TURNS)
            ]
            # Long enough for the first attempts' socket timeouts to fire and redis-py to resend.
            await asyncio.sleep(0.6)
            os.kill(pid, signal.SIGCONT)
            return await asyncio.gather(*writes, return_exceptions=True)
        finally:
            os.kill(pid, signal.SIGCONT)
            await store.aclose()

    results = asyncio.run(scenario())
    acknowledged = {f"q{i}" for i, r in enumerate(results) if r is None}
    failures = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(f, StoreUnavailable) for f in failures), failures

    client = redis.Redis(port=redis_server.port, password=redis_server.password)
    deadline = time.monotonic() + 10
    while True:  # writes buffered by the stalled server may land after their callers gave up
        stored = [json.loads(m) for m in client.lrange(KEY_PREFIX + session_id, 0, -1)]
        questions = [m["content"] for m in stored if m["role"] == "user"]
        if len(questions) >= TURNS or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    duplicates = {q for q in questions if questions.count(q) > 1}
    assert duplicates == set(), f"{len(duplicates)} of {TURNS} turns stored more than once"
    assert acknowledged <= set(questions)
    # Each turn's pair stays together: the write is one script.
    for question, answer in zip(stored[::2], stored[1::2], strict=True):
        assert answer["content"] == "a" + question["content"][1:]
    # The stall really made the client library resend: more turns arrived than one attempt each
    # could explain only if some were resent, which the counter of commands shows.
    calls = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    assert calls > TURNS, f"no write was resent ({calls} EVALSHA for {TURNS} turns)"


def _occupy(store: RedisStore, block_s: float, waves: int) -> list[asyncio.Future[object]]:
    """`waves` of calls that each hold one of the store's connections for `block_s` (BLPOP on
    an empty list), so each later wave, and anything after them, waits for a connection."""
    return [
        asyncio.ensure_future(store._run(lambda: store._redis.blpop("moorage:test:empty", block_s)))
        for _ in range(waves * POOL_SIZE)
    ]


def test_a_burst_larger_than_the_pool_waits_for_connections_and_is_not_a_store_outage(
    redis_server: Redis,
) -> None:
    """The store's timeout bounds the call once it has a connection, not the wait for one.

    Counting the wait answered a burst of 2,000 streamed turns with 503s while Redis answered
    every command in a millisecond, and marked the store down and up again many times a second.
    """

    async def scenario() -> tuple[list[object], bool, float]:
        store = RedisStore(redis_server.url, 600, max_messages=1000, timeout_s=1.0)
        try:
            # Every connection open first: connecting is not what this measures.
            await asyncio.gather(*(store.ping() for _ in range(POOL_SIZE)))
            blocked = _occupy(store, 0.5, waves=3)
            await asyncio.sleep(0)  # the first wave holds every connection
            started = time.monotonic()
            context = await store.context("queued", 10, None)
            waited = time.monotonic() - started
            results = await asyncio.gather(*blocked, return_exceptions=True)
            return [*results, context], store.health.up, waited
        finally:
            await store.aclose()

    results, up, waited = asyncio.run(scenario())
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert up
    # It waited for the three waves (longer than the store timeout), then was answered.
    assert waited > 1.0


def test_a_call_that_finds_no_connection_within_the_request_bound_is_refused_without_an_outage(
    redis_server: Redis,
) -> None:
    async def scenario() -> tuple[BaseException | None, bool]:
        store = RedisStore(
            redis_server.url, 600, max_messages=1000, timeout_s=1.0, queue_timeout_s=0.1
        )
        try:
            await asyncio.gather(*(store.ping() for _ in range(POOL_SIZE)))
            blocked = _occupy(store, 0.3, waves=2)
            await asyncio.sleep(0)
            try:
                await store.context("queued", 10, None)
            except StoreUnavailable as err:
                refused: BaseException | None = err
            else:
                refused = None
            await asyncio.gather(*blocked, return_exceptions=True)
            return refused, store.health.up
        finally:
            await store.aclose()

    refused, up = asyncio.run(scenario())
    assert isinstance(refused, StoreUnavailable)
    assert "no free connection" in str(refused)
    assert up
