"""Token budgets in a real redis-server: one script per step, exact under concurrency."""

from __future__ import annotations

import asyncio

import pytest

from agent_service.budgets import (
    Budget,
    BudgetExceeded,
    RedisBudgets,
    open_budgets,
    session_budget_keys,
)
from agent_service.providers import Usage
from agent_service.store import RedisStore, session_tag


def _store(url: str) -> RedisStore:
    return RedisStore(url, 3600, max_messages=100, timeout_s=5.0)


def _budget(limit: int) -> Budget:
    return Budget("session", session_budget_keys(session_tag("budgeted")), limit, 3600, 3600)


def test_concurrent_reservations_from_two_clients_never_promise_more_than_the_budget(
    redis_server,
) -> None:
    async def scenario() -> tuple[int, int, dict[bytes, bytes]]:
        stores = [_store(redis_server.url), _store(redis_server.url)]
        ledgers = [open_budgets(s, 30.0) for s in stores]
        budget = _budget(1000)

        async def turn(i: int) -> bool:
            ledger = ledgers[i % 2]
            try:
                held = await ledger.reserve([budget], 100)
            except BudgetExceeded:
                return False
            await asyncio.sleep(0.05)
            await ledger.settle(held, Usage(70, 30))
            return True

        outcomes = await asyncio.gather(*(turn(i) for i in range(50)))
        totals = await stores[0]._redis.hgetall(budget.keys[0])
        after = await asyncio.gather(*(turn(i) for i in range(5)))
        for store in stores:
            await store.aclose()
        return sum(outcomes), sum(after), totals

    succeeded, later, totals = asyncio.run(scenario())
    assert succeeded == 10
    assert later == 0  # 10 x 100 spent: the budget is used up
    assert totals == {b"spent": b"1000", b"input": b"700", b"output": b"300"}


def test_a_reservation_whose_turn_died_expires_with_its_lease(redis_server) -> None:
    async def scenario() -> None:
        store = _store(redis_server.url)
        ledger = open_budgets(store, 0.0)
        assert isinstance(ledger, RedisBudgets)
        ledger._lease_ms = 300  # a turn that never settles: its replica died
        budget = _budget(100)
        await ledger.reserve([budget], 100)
        with pytest.raises(BudgetExceeded) as refused:
            await ledger.reserve([budget], 100)
        assert refused.value.retry_after_s == 1
        await asyncio.sleep(0.4)
        held = await ledger.reserve([budget], 100)
        await ledger.settle(held, Usage(1, 1))
        await ledger.settle(held, Usage(1, 1))  # a retried settle: recorded once
        assert await store._redis.hget(budget.keys[0], "spent") == b"2"
        await store.aclose()

    asyncio.run(scenario())
