"""Token budgets in a real redis-server: one script per step, exact under concurrency, also
through two service replicas."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from agent_service.budgets import (
    Budget,
    BudgetExceeded,
    RedisBudgets,
    client_budget_keys,
    open_budgets,
    session_budget_keys,
    utc_day,
)
from agent_service.providers import Usage
from agent_service.store import RedisStore, session_tag
from tests.integration.conftest import SECRET
from tests.integration.fake_openai import FakeOpenAI, Step, completion

ALPHA_KEY = f"{SECRET}-alpha-budget"


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


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric in a Prometheus text exposition (values, not HELP lines)."""
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_fifty_concurrent_turns_across_two_replicas_spend_exactly_a_budget_of_ten(
    tmp_path: Path, redis_server, fake_api: FakeOpenAI, start_service
) -> None:
    # Every turn uses exactly what it reserves (70 + 30 tokens), so a 1,000-token day allows 10
    # turns whatever order they settle in; the model call takes 300 ms so all 50 overlap.
    fake_api.script = [Step(200, completion("fine", usage=(70, 30)), delay_s=0.3)]
    keys = tmp_path / "keys"
    keys.write_text(f"alpha:{ALPHA_KEY}\n")
    replicas = [
        start_service(
            AGENT_SESSION_URL=redis_server.url,
            AGENT_API_KEYS_FILE=str(keys),
            AGENT_MODEL="openai:fake-model",
            AGENT_MODEL_BASE_URL=fake_api.base_url,
            AGENT_BUDGET_CLIENT_DAILY_TOKENS="1000",
            AGENT_BUDGET_TURN_TOKENS="100",
            AGENT_MODEL_PRICES='{"fake-model": {"input": 3.0, "output": 15.0}}',
        )
        for _ in range(2)
    ]
    for replica in replicas:
        replica.wait_ready()

    async def turns() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {ALPHA_KEY}"}
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(replicas[i % 2].url + "/v1/chat", json={"message": f"turn {i}"})
                    for i in range(50)
                )
            )

    day, _ = utc_day()
    answers = asyncio.run(turns())
    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(ok) == 10, [a.status_code for a in answers]
    assert len(refused) == 40
    for answer in refused:
        assert answer.status_code == 429, answer.text
        assert answer.json()["error"] == "budget-exceeded"
        assert int(answer.headers["Retry-After"]) >= 1
    assert len(fake_api.received) == 10  # a refused turn never reaches the model
    for replica in replicas:  # each got 25 turns: both refused, drawing on the one budget
        assert sum(a.url.port == replica.port for a in refused) >= 15

    usages = [a.json()["usage"] for a in ok]
    assert all(u["input_tokens"] == 70 and u["output_tokens"] == 30 for u in usages)
    assert all(u["cost_usd"] == pytest.approx((70 * 3 + 30 * 15) / 1e6) for u in usages)
    # The spend recorded in Redis is the sum of the usage of the successful answers.
    stored = redis.Redis(port=redis_server.port, password=redis_server.password)
    totals = stored.hgetall(client_budget_keys("alpha", day)[0])
    assert totals == {
        b"spent": str(sum(u["input_tokens"] + u["output_tokens"] for u in usages)).encode(),
        b"input": str(sum(u["input_tokens"] for u in usages)).encode(),
        b"output": str(sum(u["output_tokens"] for u in usages)).encode(),
    }
    assert stored.hlen(client_budget_keys("alpha", day)[1]) == 0  # no reservation left behind

    # The metrics of both replicas add up to the same figures, by client and model.
    expositions = [httpx.get(r.url + "/metrics").text for r in replicas]
    tokens: dict[str, float] = {}
    cost = refusals = 0.0
    for text in expositions:
        for labels, value in _samples(text, "agent_tokens_total"):
            assert (labels["client"], labels["model"]) == ("alpha", "openai:fake-model")
            tokens[labels["direction"]] = tokens.get(labels["direction"], 0) + value
        for labels, value in _samples(text, "agent_cost_usd_total"):
            assert (labels["client"], labels["model"]) == ("alpha", "openai:fake-model")
            cost += value
        refusals += sum(v for labels, v in _samples(text, "agent_budget_refusals_total"))
    assert tokens == {"input": 700.0, "output": 300.0}
    assert cost == pytest.approx(10 * (70 * 3 + 30 * 15) / 1e6)
    assert refusals == 40


def test_a_sessions_totals_add_up_every_turn_on_any_replica_trimmed_ones_included(
    redis_server, start_service
) -> None:
    replicas = [
        start_service(
            AGENT_SESSION_URL=redis_server.url,
            AGENT_MAX_HISTORY_MESSAGES="2",
            AGENT_CONTEXT_MESSAGES="2",
        )
        for _ in range(2)
    ]
    for replica in replicas:
        replica.wait_ready()
    usages = []
    for i, message in enumerate(["one", "one two", "calc 6*7", "count a b c"]):
        answer = httpx.post(
            replicas[i % 2].url + "/v1/chat", json={"session_id": "totals", "message": message}
        )
        assert answer.status_code == 200, answer.text
        usages.append(answer.json()["usage"])
    expected = {
        "input_tokens": sum(u["input_tokens"] for u in usages),
        "output_tokens": sum(u["output_tokens"] for u in usages),
    }
    for replica in replicas:
        history = httpx.get(replica.url + "/v1/sessions/totals").json()
        assert len(history["messages"]) == 2
        assert history["usage"] == expected

    stored = redis.Redis(port=redis_server.port, password=redis_server.password)
    totals_key = session_budget_keys(session_tag("totals"))[0]
    assert stored.ttl(totals_key) > 0  # it expires with the session
    assert httpx.delete(replicas[1].url + "/v1/sessions/totals").status_code == 204
    assert not stored.exists(totals_key)
