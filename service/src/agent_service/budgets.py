"""Token budgets per session and per client per UTC day, shared by every replica.

A turn reserves `AGENT_BUDGET_TURN_TOKENS` in each budget before its first model call and settles
what it really used when it ends. Both steps are one Lua script on one budget's keys, so the
check and the write are a single atomic step in Redis: concurrent turns on any number of replicas
see each other's reservations, and a budget is never promised twice (the failure LiteLLM's users
report, whose check and write are separate). While reservations cover what turns use, spend never
exceeds the budget; a turn that uses more than it reserved is still recorded in full (the budget
is then exhausted for the next turn) and counted in `agent_budget_overruns_total`.

A reservation is a lease: it expires after the longest turn (AGENT_REQUEST_TIMEOUT_S plus a
margin), so a replica that dies mid-turn does not hold budget forever, and settling is a no-op
once the reservation is gone, which makes a settle retried after a lost reply count once.

Keys: a budget is three keys sharing one Redis Cluster hash tag: the session's own tag for a
session budget (so it lives beside the session), `{moorage:budget:client:<name>:<day>}` for a
client's day. A turn with both budgets reserves the client's first, then the session's, and
gives the client's back if the session refuses; each budget stays exact on its own. A session's
totals (what its history reports) are its budget's first key; without a session budget each
turn adds its usage there by `RECORD_SCRIPT`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_service.providers import Usage

log = logging.getLogger(__name__)

# KEYS: totals (hash: spent, input, output), reservations (hash: id -> tokens),
#       leases (zset: id -> expiry, ms). ARGV: id, tokens, limit, ttl s, lease ms.
# Returns {1} when reserved, else {0, spent, reserved}.
RESERVE_SCRIPT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms)
for _, id in ipairs(expired) do redis.call('HDEL', KEYS[2], id) end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms) end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = 0
for _, tokens in ipairs(redis.call('HVALS', KEYS[2])) do reserved = reserved + tonumber(tokens) end
local tokens = tonumber(ARGV[2])
if spent + reserved + tokens > tonumber(ARGV[3]) then return {0, spent, reserved} end
redis.call('HSET', KEYS[2], ARGV[1], tokens)
redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[5]), ARGV[1])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return {1}
"""

# KEYS: as above. ARGV: id, input tokens, output tokens, ttl s.
# Records the usage once: only while the reservation is held. Returns 1 when recorded, else 0.
SETTLE_SCRIPT = """
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
local input, output = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[1], 'spent', input + output)
redis.call('HINCRBY', KEYS[1], 'input', input)
redis.call('HINCRBY', KEYS[1], 'output', output)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return 1
"""

# KEYS: totals. ARGV: input tokens, output tokens, ttl s. A turn's usage added to its session's
# totals when no session budget settles it there already.
RECORD_SCRIPT = """
local input, output = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('HINCRBY', KEYS[1], 'spent', input + output)
redis.call('HINCRBY', KEYS[1], 'input', input)
redis.call('HINCRBY', KEYS[1], 'output', output)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

LEASE_MARGIN_S = 10.0
DAY_S = 86_400
CLIENT_KEY_PREFIX = "moorage:budget:client:"

Script = Callable[[Sequence[str], Sequence[str | int]], Awaitable[Any]]


@dataclass(frozen=True)
class Budget:
    """One budget's keys, limit and how long its keys live."""

    scope: str  # "session" or "client"
    keys: tuple[str, str, str]
    limit: int
    ttl_s: int
    retry_after_s: int  # when a budget spent in full frees up again


class BudgetExceeded(Exception):
    """A turn would go past a budget; answered as 429 `budget-exceeded`."""

    def __init__(self, scope: str, retry_after_s: int) -> None:
        super().__init__(f"the {scope} token budget is used up")
        self.scope = scope
        self.retry_after_s = max(1, retry_after_s)


@dataclass
class Reservation:
    """The budgets a turn holds; settle it exactly once when the turn ends."""

    id: str
    held: list[Budget] = field(default_factory=list)


def session_budget_keys(session_tag: str) -> tuple[str, str, str]:
    """A session's budget keys, in the session's hash slot (`session_tag` includes braces)."""
    return (f"{session_tag}:usage", f"{session_tag}:reserved", f"{session_tag}:leases")


def client_budget_keys(client: str, day: str) -> tuple[str, str, str]:
    """A client's budget keys for one UTC day, in a hash slot of their own."""
    tag = "{" + CLIENT_KEY_PREFIX + client + ":" + day + "}"
    return (tag, f"{tag}:reserved", f"{tag}:leases")


def utc_day(now: float | None = None) -> tuple[str, int]:
    """Today's UTC date as YYYYMMDD and the seconds until it ends (budgets are calendar days)."""
    moment = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    left = DAY_S - (moment.hour * 3600 + moment.minute * 60 + moment.second)
    return moment.strftime("%Y%m%d"), max(left, 1)


class RedisBudgets:
    """Budgets kept in Redis by the scripts above."""

    def __init__(
        self,
        reserve: Script,
        settle: Script,
        lease_s: float,
        record: Script | None = None,
        read: Script | None = None,
        forget: Script | None = None,
    ) -> None:
        self._reserve = reserve
        self._settle = settle
        self._record = record
        self._read = read
        self._forget = forget
        self._lease_ms = math.ceil(lease_s * 1000)

    async def record(self, keys: tuple[str, str, str], usage: Usage, ttl_s: int) -> None:
        """Add a turn's usage to totals that no budget settles (a session's without a budget)."""
        assert self._record is not None
        await self._record(keys[:1], [usage.input_tokens, usage.output_tokens, ttl_s])

    async def totals(self, keys: tuple[str, str, str]) -> Usage | None:
        """What was recorded under these keys; None when nothing was (or it expired)."""
        assert self._read is not None
        input_tokens, output_tokens = await self._read(keys[:1], [])
        if input_tokens is None:
            return None
        return Usage(int(input_tokens), int(output_tokens or 0))

    async def forget(self, keys: tuple[str, str, str]) -> None:
        """Drop the totals and reservations (a deleted session's)."""
        assert self._forget is not None
        await self._forget(list(keys), [])

    async def reserve(self, budgets: Sequence[Budget], tokens: int) -> Reservation:
        """Reserve `tokens` in every budget, or none: BudgetExceeded names the first refusal."""
        held = Reservation(secrets.token_hex(8))
        for budget in budgets:
            reply = await self._reserve(
                budget.keys, [held.id, tokens, budget.limit, budget.ttl_s, self._lease_ms]
            )
            if int(reply[0]) != 1:
                await self.settle(held, Usage())
                spent = int(reply[1])
                # Spent in full: wait for the budget's period; else in-flight turns may give back.
                wait = budget.retry_after_s if spent + tokens > budget.limit else 1
                raise BudgetExceeded(budget.scope, wait)
            held.held.append(budget)
        return held

    async def settle(self, reservation: Reservation, usage: Usage) -> None:
        """Record what the turn used in every budget it holds and release the reservations."""
        held, reservation.held = reservation.held, []
        for budget in held:
            await self._settle(
                budget.keys,
                [reservation.id, usage.input_tokens, usage.output_tokens, budget.ttl_s],
            )


@dataclass
class _Totals:
    used: Usage = field(default_factory=Usage)
    reserved: dict[str, int] = field(default_factory=dict)
    expires: float = 0.0

    @property
    def spent(self) -> int:
        return self.used.total


class MemoryBudgets:
    """The same budgets in this process's memory (with the memory:// store: one process)."""

    def __init__(self) -> None:
        self._budgets: dict[tuple[str, ...], _Totals] = {}

    def _totals(self, budget: Budget) -> _Totals:
        return self._at(budget.keys, budget.ttl_s)

    def _at(self, keys: tuple[str, ...], ttl_s: int) -> _Totals:
        now = time.monotonic()
        totals = self._budgets.get(keys)
        if totals is None or totals.expires < now:
            totals = self._budgets[keys] = _Totals()
        totals.expires = now + ttl_s
        return totals

    async def record(self, keys: tuple[str, str, str], usage: Usage, ttl_s: int) -> None:
        totals = self._at(keys, ttl_s)
        totals.used += usage

    async def totals(self, keys: tuple[str, str, str]) -> Usage | None:
        totals = self._budgets.get(keys)
        if totals is None or totals.expires < time.monotonic():
            return None
        return totals.used

    async def forget(self, keys: tuple[str, str, str]) -> None:
        self._budgets.pop(keys, None)

    async def reserve(self, budgets: Sequence[Budget], tokens: int) -> Reservation:
        held = Reservation(secrets.token_hex(8))
        for budget in budgets:
            totals = self._totals(budget)
            if totals.spent + sum(totals.reserved.values()) + tokens > budget.limit:
                await self.settle(held, Usage())
                spent_out = totals.spent + tokens > budget.limit
                raise BudgetExceeded(budget.scope, budget.retry_after_s if spent_out else 1)
            totals.reserved[held.id] = tokens
            held.held.append(budget)
        return held

    async def settle(self, reservation: Reservation, usage: Usage) -> None:
        held, reservation.held = reservation.held, []
        for budget in held:
            totals = self._totals(budget)
            if totals.reserved.pop(reservation.id, None) is not None:
                totals.used += usage


Budgets = RedisBudgets | MemoryBudgets


@dataclass(frozen=True)
class BudgetPolicy:
    """Which budgets a turn draws on, from the settings (`AGENT_BUDGET_*`)."""

    session_tokens: int | None
    client_daily_tokens: int | None
    turn_tokens: int
    session_ttl_s: int

    @property
    def enabled(self) -> bool:
        """Whether any budget is set."""
        return self.session_tokens is not None or self.client_daily_tokens is not None

    def budgets(self, session_tag: str, client: str | None) -> list[Budget]:
        """The budgets of one turn: the client's day (when known), then the session's."""
        chosen: list[Budget] = []
        if self.client_daily_tokens is not None and client is not None:
            day, left_s = utc_day()
            chosen.append(
                Budget(
                    "client",
                    client_budget_keys(client, day),
                    self.client_daily_tokens,
                    left_s + 3600,  # outlives its day a little: clocks of replicas differ
                    left_s,
                )
            )
        if self.session_tokens is not None:
            chosen.append(
                Budget(
                    "session",
                    session_budget_keys(session_tag),
                    self.session_tokens,
                    self.session_ttl_s,
                    self.session_ttl_s,
                )
            )
        return chosen


def warn_if_ineffective(policy: BudgetPolicy, api_keys_file: Path | None) -> None:
    """Log a warning when a client budget is set but no client can be known (no API keys)."""
    if policy.client_daily_tokens is not None and api_keys_file is None:
        log.warning(
            "AGENT_BUDGET_CLIENT_DAILY_TOKENS is set but AGENT_API_KEYS_FILE is not: turns "
            "come from no known client, so no turn draws on a client budget"
        )


def open_budgets(store: Any, lease_s: float) -> Budgets:
    """Budgets in the session store's Redis, or in memory beside a memory:// store."""
    script = getattr(store, "script", None)
    if script is None:
        return MemoryBudgets()
    return RedisBudgets(
        script(RESERVE_SCRIPT),
        script(SETTLE_SCRIPT),
        lease_s + LEASE_MARGIN_S,
        record=script(RECORD_SCRIPT),
        read=script("return redis.call('HMGET', KEYS[1], 'input', 'output')"),
        forget=script("return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])"),
    )
