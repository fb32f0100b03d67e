"""Token budgets: which budgets a turn draws on, and the in-memory ledger's arithmetic."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from agent_service.budgets import (
    Budget,
    BudgetExceeded,
    BudgetPolicy,
    MemoryBudgets,
    client_budget_keys,
    utc_day,
    warn_if_ineffective,
)
from agent_service.providers import Usage


def _budget(limit: int, scope: str = "client") -> Budget:
    return Budget(scope, (f"{scope}:a", f"{scope}:b", f"{scope}:c"), limit, 3600, 120)


def test_a_policy_draws_on_the_clients_day_then_the_session() -> None:
    policy = BudgetPolicy(1000, 5000, 100, 600)
    client, session = policy.budgets("{moorage:session:s1}", "alice")
    assert (client.scope, client.limit) == ("client", 5000)
    assert client.keys[0] == "{moorage:budget:client:alice:" + utc_day()[0] + "}"
    assert (session.scope, session.limit, session.ttl_s) == ("session", 1000, 600)
    assert session.keys[0].startswith("{moorage:session:s1}:")
    # Without a client (auth off) there is no client budget; without limits, none at all.
    assert [b.scope for b in policy.budgets("{s}", None)] == ["session"]
    assert BudgetPolicy(None, None, 100, 600).budgets("{s}", "alice") == []


def test_every_key_of_a_budget_shares_one_cluster_hash_tag() -> None:
    keys = client_budget_keys("alice", "20260102")
    tag = keys[0]
    assert all(k.startswith(tag) for k in keys)
    assert tag.startswith("{")
    assert tag.endswith("}")


def test_a_day_ends_at_utc_midnight() -> None:
    assert utc_day(1_767_312_000.0) == ("20260102", 86_400)  # 2026-01-02T00:00:00Z
    assert utc_day(1_767_398_399.0) == ("20260102", 1)


def test_reservations_in_flight_count_against_the_budget() -> None:
    async def scenario() -> None:
        ledger = MemoryBudgets()
        budget = _budget(300)
        first = await ledger.reserve([budget], 100)
        second = await ledger.reserve([budget], 100)
        third = await ledger.reserve([budget], 100)
        with pytest.raises(BudgetExceeded) as refused:
            await ledger.reserve([budget], 100)
        assert refused.value.retry_after_s == 1  # in-flight turns may give budget back
        await ledger.settle(first, Usage(20, 10))
        with pytest.raises(BudgetExceeded):
            await ledger.reserve([budget], 71)  # 30 spent + 200 held + 71 > 300
        fourth = await ledger.reserve([budget], 70)
        for held in (second, third):
            await ledger.settle(held, Usage(60, 40))
        await ledger.settle(fourth, Usage(40, 30))
        with pytest.raises(BudgetExceeded) as spent_out:
            await ledger.reserve([budget], 1)  # 300 spent
        assert spent_out.value.retry_after_s == 120

    asyncio.run(scenario())


def test_a_refusal_by_the_second_budget_gives_the_first_back() -> None:
    async def scenario() -> None:
        ledger = MemoryBudgets()
        client, session = _budget(1000), _budget(150, "session")
        await ledger.reserve([client, session], 100)
        with pytest.raises(BudgetExceeded) as refused:
            await ledger.reserve([client, session], 100)
        assert refused.value.scope == "session"
        # The client's 100 of the refused turn were released: 9 more turns fit there.
        for _ in range(9):
            await ledger.reserve([client], 100)
        with pytest.raises(BudgetExceeded):
            await ledger.reserve([client], 1)

    asyncio.run(scenario())


def test_settling_twice_records_once() -> None:
    async def scenario() -> None:
        ledger = MemoryBudgets()
        budget = _budget(100)
        held = await ledger.reserve([budget], 50)
        await ledger.settle(held, Usage(30, 20))
        await ledger.settle(held, Usage(30, 20))
        await ledger.reserve([budget], 50)  # 50 spent + 50 = 100: still fits

    asyncio.run(scenario())


def test_a_client_budget_without_api_keys_warns_that_no_turn_draws_on_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="agent_service.budgets"):
        warn_if_ineffective(BudgetPolicy(None, 1000, 100, 600), Path("/keys"))
        warn_if_ineffective(BudgetPolicy(1000, None, 100, 600), None)
        assert not caplog.records
        warn_if_ineffective(BudgetPolicy(None, 1000, 100, 600), None)
    (record,) = caplog.records
    assert "AGENT_API_KEYS_FILE" in record.getMessage()
