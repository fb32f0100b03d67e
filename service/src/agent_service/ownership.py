"""Which client a session belongs to: the one whose turn created it.

With client authentication on, a turn claims its session for its client in one atomic step
(the first claim wins, however many replicas race), and a session claimed by another client is
answered as unknown (404), so a session id alone no longer opens a conversation. The owner key
sits in the session's Redis Cluster hash slot and lives as long as the session (its TTL).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

# KEYS: owner. ARGV: client, ttl s. 1 when the session is (now) the client's, else 0.
CLAIM_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

Script = Callable[[Sequence[str], Sequence[Any]], Awaitable[Any]]


def owner_key(session_tag: str) -> str:
    """The owner key of a session (`session_tag` is its hash tag, braces included)."""
    return f"{session_tag}:owner"


class RedisOwners:
    """Owners in the session store's Redis."""

    def __init__(self, claim: Script, get: Script, forget: Script, ttl_s: int) -> None:
        self._claim = claim
        self._get = get
        self._forget = forget
        self._ttl_s = ttl_s

    async def claim(self, session_tag: str, client: str) -> bool:
        """Make the session the client's unless another client has it."""
        return int(await self._claim([owner_key(session_tag)], [client, self._ttl_s])) == 1

    async def owner(self, session_tag: str) -> str | None:
        """The session's client, or None when nobody claimed it (or it expired)."""
        value = await self._get([owner_key(session_tag)], [])
        return None if value is None else bytes(value).decode()

    async def forget(self, session_tag: str) -> None:
        """Drop the claim with the session."""
        await self._forget([owner_key(session_tag)], [])


class MemoryOwners:
    """The same in this process's memory (beside a memory:// store)."""

    def __init__(self, ttl_s: int) -> None:
        self._ttl_s = ttl_s
        self._owners: dict[str, tuple[str, float]] = {}

    async def claim(self, session_tag: str, client: str) -> bool:
        current = await self.owner(session_tag)
        if current is not None and current != client:
            return False
        self._owners[session_tag] = (client, time.monotonic() + self._ttl_s)
        return True

    async def owner(self, session_tag: str) -> str | None:
        entry = self._owners.get(session_tag)
        if entry is None or entry[1] < time.monotonic():
            self._owners.pop(session_tag, None)
            return None
        return entry[0]

    async def forget(self, session_tag: str) -> None:
        self._owners.pop(session_tag, None)


Owners = RedisOwners | MemoryOwners


def open_owners(store: Any, ttl_s: int) -> Owners:
    """Owners in the session store's Redis, or in memory beside a memory:// store."""
    script = getattr(store, "script", None)
    if script is None:
        return MemoryOwners(ttl_s)
    return RedisOwners(
        script(CLAIM_SCRIPT),
        script("return redis.call('GET', KEYS[1])"),
        script("return redis.call('DEL', KEYS[1])"),
        ttl_s,
    )
