"""Session stores: Redis for production, memory for a single process.

A session is its history (a list of messages, trimmed to a maximum) plus a record of its recent
turns keyed by turn id. A turn is written by one idempotent script keyed by its turn id, so a
write that is retried after a lost reply (redis-py retries a command on a broken connection, and
the first attempt may already have run) stores the turn once, and an `Idempotency-Key` repeat
finds the stored answer instead of storing a second copy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

Message = dict[str, Any]
KEY_PREFIX = "moorage:session:"
# Connections per worker process: Redis runs commands one at a time, so more would only queue
# there instead of here.
POOL_SIZE = 64
_T = TypeVar("_T")

# KEYS: history list, sequence counter, turn records (hash), turn ids in order (list).
# ARGV: turn id, record, ttl, max messages, max turns, messages...
# Returns {1} when stored, {0, record} when the turn id was stored before (nothing written).
APPEND_SCRIPT = """
local prior = redis.call('HGET', KEYS[3], ARGV[1])
if prior then return {0, prior} end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], redis.call('LLEN', KEYS[1]))
end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 6))
redis.call('INCRBY', KEYS[2], #ARGV - 5)
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
if redis.call('RPUSH', KEYS[4], ARGV[1]) > tonumber(ARGV[5]) then
  redis.call('HDEL', KEYS[3], redis.call('LPOP', KEYS[4]))
end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return {1}
"""

# KEYS: history list, sequence counter. ARGV: limit, before (-1: the end).
# Returns {} for an unknown session, else {seq of the first returned, of the oldest, messages...}.
_PAGE = """
local len = redis.call('LLEN', KEYS[1])
if len == 0 then return {} end
local total = tonumber(redis.call('GET', KEYS[2]) or len)
local first = total - len
local stop = total
local before = tonumber(ARGV[2])
if before >= 0 and before < stop then stop = before end
local start = math.max(stop - tonumber(ARGV[1]), first)
local out = {start, first}
if stop > start then
  local items = redis.call('LRANGE', KEYS[1], start - first, stop - first - 1)
  for i = 1, #items do out[#out + 1] = items[i] end
end
return out
"""


class StoreUnavailable(Exception):
    """The session store did not answer in time; the request can be retried later."""


@dataclass(frozen=True)
class Page:
    """Messages `first` .. `first + len(messages) - 1` of a session (positions never reused)."""

    first: int
    oldest: int  # position of the oldest message still stored
    messages: list[Message]


@dataclass(frozen=True)
class Context:
    """What a turn needs before it runs: recent history and any earlier record of this turn."""

    history: list[Message]
    record: str | None


@dataclass
class StoreHealth:
    """Whether the store answered its last call; `on_change` hears every flip."""

    up: bool = False
    on_change: Callable[[bool], None] = field(default=lambda up: None, repr=False)

    def saw(self, up: bool) -> None:
        """Record the outcome of one store call."""
        if up is self.up:
            return
        self.up = up
        self.on_change(up)
        if up:
            log.info("session store answers again")
        else:
            log.warning("session store unavailable: store requests answer 503 until it returns")


class SessionStore(Protocol):
    """Where session histories live, keyed by session id."""

    health: StoreHealth

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    async def context(self, session_id: str, limit: int, turn_id: str | None) -> Context:
        """The last `limit` messages, and the record stored with `turn_id` (if given and kept)."""

    async def append(
        self, session_id: str, turn_id: str, record: str, messages: Sequence[Message]
    ) -> str | None:
        """Store a turn once: None when stored now, else the record stored with it before."""

    async def page(self, session_id: str, limit: int, before: int | None) -> Page | None:
        """Up to `limit` messages ending before position `before`; None when unknown."""

    async def delete(self, session_id: str) -> bool:
        """Forget a session; False when it was unknown."""

    async def aclose(self) -> None:
        """Release connections."""


def session_tag(session_id: str) -> str:
    """The Redis Cluster hash tag of a session: keys that include it share its slot."""
    return "{" + KEY_PREFIX + session_id + "}"


def session_keys(session_id: str) -> list[str]:
    # The hash tag puts every key of a session in the history list's cluster slot (CRC16 of a
    # key without braces is that of the whole key), so the scripts may touch them all.
    history = KEY_PREFIX + session_id
    tag = "{" + history + "}"
    return [history, tag + ":seq", tag + ":turns", tag + ":turn-ids"]


class RedisStore:
    """One Redis list per session; a turn costs one read and one atomic, idempotent write."""

    def __init__(
        self,
        url: str,
        ttl_s: int,
        *,
        max_messages: int,
        timeout_s: float,
        health: StoreHealth | None = None,
        socket_timeout_s: float | None = None,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_messages = max_messages
        self._max_turns = max(max_messages // 2, 1)
        self._timeout_s = timeout_s
        self.health = health or StoreHealth()
        self._redis = aioredis.Redis.from_url(
            url,
            max_connections=POOL_SIZE,
            socket_connect_timeout=min(timeout_s, 1.0),
            # A timed-out call is abandoned at `timeout_s` (see `_run`); retries are for broken
            # connections (e.g. a pooled one after a Redis restart) and are safe: every write
            # is idempotent.
            socket_timeout=socket_timeout_s or timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
            health_check_interval=15,
            decode_responses=False,
        )
        self._append = self._redis.register_script(APPEND_SCRIPT)
        self._page = self._redis.register_script(_PAGE)
        # redis-py's pool raises "Too many connections" once every connection is busy, which
        # turned a burst of 256 concurrent turns into a storm of 503s. A burst waits here for a
        # free connection instead (within the call's bound); this costs a fraction of what
        # redis-py's BlockingConnectionPool adds to every command.
        self._slots = asyncio.Semaphore(POOL_SIZE)

    async def _run(self, command: Callable[[], Awaitable[_T]]) -> _T:
        """Run one call on a free connection within `timeout_s`; a failure is StoreUnavailable."""
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._slots:
                    result = await command()
        except TimeoutError as err:
            self.health.saw(False)
            raise StoreUnavailable("timeout") from err
        except (RedisError, OSError) as err:
            self.health.saw(False)
            raise StoreUnavailable(type(err).__name__) from err
        self.health.saw(True)
        return result

    async def ping(self) -> None:
        await self._run(self._redis.ping)

    def script(self, source: str) -> Callable[[Sequence[str], Sequence[Any]], Awaitable[Any]]:
        """A Lua script run like the store's own calls: bounded in time, counted in its health."""
        registered = self._redis.register_script(source)

        async def call(keys: Sequence[str], args: Sequence[Any]) -> Any:
            return await self._run(lambda: registered(keys=list(keys), args=list(args)))

        return call

    async def context(self, session_id: str, limit: int, turn_id: str | None) -> Context:
        history_key, _, turns_key, _ = session_keys(session_id)
        if turn_id is None:
            raw = await self._run(lambda: self._redis.lrange(history_key, -limit, -1))
            return Context([json.loads(item) for item in raw], None)

        async def both() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.lrange(history_key, -limit, -1)
                pipe.hget(turns_key, turn_id)
                return await pipe.execute()

        raw, record = await self._run(both)
        return Context(
            [json.loads(item) for item in raw], None if record is None else record.decode()
        )

    async def append(
        self, session_id: str, turn_id: str, record: str, messages: Sequence[Message]
    ) -> str | None:
        encoded = [json.dumps(m, separators=(",", ":")) for m in messages]
        args: list[str | int] = [
            turn_id,
            record,
            self._ttl_s,
            self._max_messages,
            self._max_turns,
            *encoded,
        ]
        reply = await self._run(lambda: self._append(keys=session_keys(session_id), args=args))
        return None if reply[0] == 1 else bytes(reply[1]).decode()

    async def page(self, session_id: str, limit: int, before: int | None) -> Page | None:
        keys = session_keys(session_id)[:2]
        args = [limit, -1 if before is None else before]
        reply = await self._run(lambda: self._page(keys=keys, args=args))
        if not reply:
            return None
        return Page(int(reply[0]), int(reply[1]), [json.loads(item) for item in reply[2:]])

    async def delete(self, session_id: str) -> bool:
        keys = session_keys(session_id)
        return bool(await self._run(lambda: self._redis.delete(*keys)))

    async def aclose(self) -> None:
        await self._redis.aclose()


@dataclass
class _Session:
    expires: float
    messages: list[Message] = field(default_factory=list)
    total: int = 0
    turns: OrderedDict[str, str] = field(default_factory=OrderedDict)


class MemoryStore:
    """Sessions in this process's memory: for development and tests, never for scale-out."""

    def __init__(self, ttl_s: int, max_messages: int = 1000) -> None:
        self._ttl_s = ttl_s
        self._max_messages = max_messages
        self._sessions: dict[str, _Session] = {}
        self.health = StoreHealth(up=True)

    def _live(self, session_id: str) -> _Session | None:
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        if entry.expires < time.monotonic():
            del self._sessions[session_id]
            return None
        return entry

    async def ping(self) -> None:
        return None

    async def context(self, session_id: str, limit: int, turn_id: str | None) -> Context:
        entry = self._live(session_id)
        if entry is None:
            return Context([], None)
        record = entry.turns.get(turn_id) if turn_id is not None else None
        return Context(list(entry.messages[-limit:]), record)

    async def append(
        self, session_id: str, turn_id: str, record: str, messages: Sequence[Message]
    ) -> str | None:
        entry = self._live(session_id) or _Session(0.0)
        if turn_id in entry.turns:
            return entry.turns[turn_id]
        entry.messages.extend(messages)
        entry.total += len(messages)
        del entry.messages[: -self._max_messages]
        entry.turns[turn_id] = record
        while len(entry.turns) > max(self._max_messages // 2, 1):
            entry.turns.popitem(last=False)
        entry.expires = time.monotonic() + self._ttl_s
        self._sessions[session_id] = entry
        return None

    async def page(self, session_id: str, limit: int, before: int | None) -> Page | None:
        entry = self._live(session_id)
        if entry is None or not entry.messages:
            return None
        first = entry.total - len(entry.messages)
        stop = entry.total if before is None or before < 0 else min(before, entry.total)
        start = max(stop - limit, first)
        return Page(start, first, entry.messages[start - first : max(stop - first, 0)])

    async def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    async def aclose(self) -> None:
        self._sessions.clear()


def open_store(
    url: str,
    ttl_s: int,
    *,
    max_messages: int = 1000,
    timeout_s: float = 1.0,
    health: StoreHealth | None = None,
) -> SessionStore:
    """A store for the URL's scheme (already validated by the settings)."""
    if url.startswith("memory://"):
        log.warning(
            "memory:// session store: sessions live in this process only; "
            "use redis:// before running more than one worker or replica"
        )
        store = MemoryStore(ttl_s, max_messages)
        if health is not None:
            health.saw(True)
            store.health = health
        return store
    return RedisStore(url, ttl_s, max_messages=max_messages, timeout_s=timeout_s, health=health)
