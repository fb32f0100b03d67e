"""Session stores: Redis for production, memory for a single process."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
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
POOL_WAIT_S = 2.0
_T = TypeVar("_T")


class StoreUnavailable(Exception):
    """The session store did not answer; the request can be retried later."""


class SessionStore(Protocol):
    """Where session histories live, keyed by session id."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    async def recent(self, session_id: str, limit: int) -> list[Message]:
        """The last `limit` messages of a session (empty when unknown)."""

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        """Append messages atomically and refresh the session's expiry."""

    async def history(self, session_id: str) -> list[Message] | None:
        """The whole history, or None when the session is unknown."""

    async def delete(self, session_id: str) -> bool:
        """Forget a session; False when it was unknown."""

    async def aclose(self) -> None:
        """Release connections."""


class RedisStore:
    """One Redis list per session; a turn costs one read and one atomic write."""

    def __init__(self, url: str, ttl_s: int) -> None:
        self._ttl_s = ttl_s
        self._redis = aioredis.Redis.from_url(
            url,
            max_connections=POOL_SIZE,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            # Few, quick retries: a request should fail fast to a 503, not hang.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
            health_check_interval=15,
            decode_responses=False,
        )
        # redis-py's pool raises "Too many connections" once every connection is busy, which
        # turned a burst of 256 concurrent turns into a storm of 503s. A burst waits here for a
        # free connection instead (at most POOL_WAIT_S); this costs a fraction of what redis-py's
        # BlockingConnectionPool adds to every command.
        self._slots = asyncio.Semaphore(POOL_SIZE)

    async def _run(self, command: Callable[[], Awaitable[_T]]) -> _T:
        """Run one command (or pipeline) on a free connection; any failure is StoreUnavailable."""
        try:
            if self._slots.locked():
                async with asyncio.timeout(POOL_WAIT_S):
                    await self._slots.acquire()
            else:
                await self._slots.acquire()
        except TimeoutError as err:
            raise StoreUnavailable("no free connection") from err
        try:
            return await command()
        except (RedisError, OSError) as err:
            raise StoreUnavailable(type(err).__name__) from err
        finally:
            self._slots.release()

    async def ping(self) -> None:
        await self._run(self._redis.ping)

    async def recent(self, session_id: str, limit: int) -> list[Message]:
        key = KEY_PREFIX + session_id
        raw = await self._run(lambda: self._redis.lrange(key, -limit, -1))
        return [json.loads(item) for item in raw]

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        key = KEY_PREFIX + session_id
        encoded = [json.dumps(m, separators=(",", ":")) for m in messages]

        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.rpush(key, *encoded)
                pipe.expire(key, self._ttl_s)
                await pipe.execute()

        await self._run(write)

    async def history(self, session_id: str) -> list[Message] | None:
        messages = await self.recent(session_id, 0)
        return messages or None

    async def delete(self, session_id: str) -> bool:
        key = KEY_PREFIX + session_id
        return bool(await self._run(lambda: self._redis.delete(key)))

    async def aclose(self) -> None:
        await self._redis.aclose()


class MemoryStore:
    """Sessions in this process's memory: for development and tests, never for scale-out."""

    def __init__(self, ttl_s: int) -> None:
        self._ttl_s = ttl_s
        self._sessions: dict[str, tuple[float, list[Message]]] = {}

    def _live(self, session_id: str) -> list[Message] | None:
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._sessions[session_id]
            return None
        return entry[1]

    async def ping(self) -> None:
        return None

    async def recent(self, session_id: str, limit: int) -> list[Message]:
        messages = self._live(session_id) or []
        return list(messages[-limit:]) if limit else list(messages)

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        history = self._live(session_id) or []
        history.extend(messages)
        self._sessions[session_id] = (time.monotonic() + self._ttl_s, history)

    async def history(self, session_id: str) -> list[Message] | None:
        messages = self._live(session_id)
        return list(messages) if messages else None

    async def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    async def aclose(self) -> None:
        self._sessions.clear()


def open_store(url: str, ttl_s: int) -> SessionStore:
    """A store for the URL's scheme (already validated by the settings)."""
    if url.startswith("memory://"):
        log.warning(
            "memory:// session store: sessions live in this process only; "
            "use redis:// before running more than one worker or replica"
        )
        return MemoryStore(ttl_s)
    return RedisStore(url, ttl_s)
