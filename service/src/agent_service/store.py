"""Session stores: Redis for production, memory for a single process.

A session is its history (a list of messages, trimmed to a maximum) plus a record of its recent
turns keyed by turn id. A turn is written by one idempotent script keyed by its turn id, so a
write that is retried after a lost reply (redis-py retries a command on a broken connection, and
the first attempt may already have run) stores the turn once, and an `Idempotency-Key` repeat
finds the stored answer instead of storing a second copy.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from pydantic_core import from_json, to_json
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import MovedError, NoScriptError, RedisClusterException, RedisError

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
    """The Redis Cluster hash tag of a session: keys that include it share its slot.

    Its slot is that of the bare history key too (Redis hashes a key without braces whole).
    """
    return "{" + KEY_PREFIX + session_id + "}"


def session_key(session_id: str, suffix: str = "") -> str:
    """The Redis key of one part of a session; every part lands in the same cluster slot.

    The bare history key `moorage:session:<id>` and the hash-tagged
    `{moorage:session:<id>}:<suffix>` share a slot (Redis hashes only the tag when there is one,
    and the whole key otherwise; a session id cannot contain braces), so one script may touch
    all of a session's keys, on Redis Cluster too. A new per-session key takes its own `suffix`;
    a script over keys of several sessions (or of a client) cannot run on Cluster.
    """
    return f"{session_tag(session_id)}:{suffix}" if suffix else KEY_PREFIX + session_id


def session_keys(session_id: str) -> list[str]:
    """KEYS of APPEND_SCRIPT: history list, sequence counter, turn records, turn ids."""
    return [session_key(session_id, part) for part in ("", "seq", "turns", "turn-ids")]


@dataclass(frozen=True)
class TlsFiles:
    """Files for `rediss…` URLs; without `ca_file` the system's CA bundle is trusted."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def kwargs(self) -> dict[str, Any]:
        """redis-py's TLS arguments: the server certificate and its host name are verified."""
        return {
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
            "ssl_ca_certs": None if self.ca_file is None else str(self.ca_file),
            "ssl_certfile": None if self.cert_file is None else str(self.cert_file),
            "ssl_keyfile": None if self.key_file is None else str(self.key_file),
        }


@dataclass(frozen=True)
class Topology:
    """A session URL taken apart: which Redis engine, where, and with which credentials."""

    kind: str  # "redis", "sentinel" or "cluster"
    tls: bool
    hosts: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    master: str = ""  # Sentinel's name of the monitored master
    db: int = 0
    sentinel_username: str | None = None
    sentinel_password: str | None = None


_ENGINE_PORTS = {"redis": 6379, "sentinel": 26379, "cluster": 6379}


def parse_session_url(url: str) -> Topology:
    """Take a `redis[s]://`, `redis[s]+sentinel://` or `redis[s]+cluster://` URL apart.

    Raises ValueError with a reason that never quotes the URL (it may hold a password).
    Sentinel URLs name the master as their first path segment, then an optional db number;
    `?sentinel_username=`/`?sentinel_password=` authenticate to the sentinels when they need
    it (the URL's user and password are for the Redis servers).
    """
    parts = urlsplit(url)
    base, _, engine = parts.scheme.partition("+")
    engine = engine or "redis"
    if base not in ("redis", "rediss") or engine not in _ENGINE_PORTS:
        raise ValueError("has an unknown scheme")
    authority = parts.netloc.rpartition("@")[2]
    hosts: list[tuple[str, int]] = []
    for host in authority.split(","):
        one = urlsplit("//" + host)
        if not one.hostname:
            raise ValueError("must name a host")
        hosts.append((one.hostname, one.port or _ENGINE_PORTS[engine]))
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    segments = [unquote(s) for s in parts.path.split("/") if s]
    topology = Topology(
        kind=engine,
        tls=base == "rediss",
        hosts=hosts,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        sentinel_username=query.get("sentinel_username"),
        sentinel_password=query.get("sentinel_password"),
    )
    if engine == "sentinel":
        if not segments or len(segments) > 2:
            raise ValueError(
                "must name the Sentinel master: redis+sentinel://h1:p1,h2:p2/<master>[/db]"
            )
        db = segments[1] if len(segments) == 2 else "0"
        if not db.isdigit():
            raise ValueError("has a database that is not a number")
        return Topology(**{**topology.__dict__, "master": segments[0], "db": int(db)})
    if engine == "cluster" and (segments or parts.query):
        raise ValueError("takes no database or options: Redis Cluster has only database 0")
    if engine == "redis" and len(hosts) > 1:
        raise ValueError("names several hosts: use redis+sentinel:// or redis+cluster://")
    return topology


class RedisStore:
    """One Redis list per session; a turn costs one read and one atomic, idempotent write.

    The URL picks the engine: one Redis, Sentinel (redis-py finds the master through the
    sentinels and again after a failover) or Cluster (redis-py follows the slot map). With
    `wait_replicas` > 0 a write is acknowledged only once that many replicas have it (Redis
    WAIT on the connection that wrote it, bounded by `wait_timeout_s`); fewer is a
    StoreUnavailable, so the turn answers 503 and a client's retry finds it or writes it again.
    """

    def __init__(
        self,
        url: str,
        ttl_s: int,
        *,
        max_messages: int,
        timeout_s: float,
        health: StoreHealth | None = None,
        socket_timeout_s: float | None = None,
        tls: TlsFiles | None = None,
        wait_replicas: int = 0,
        wait_timeout_s: float = 0.5,
        queue_timeout_s: float = 30.0,
    ) -> None:
        self._ttl_s = ttl_s
        self._queue_timeout_s = queue_timeout_s
        self._max_messages = max_messages
        self._max_turns = max(max_messages // 2, 1)
        self._timeout_s = timeout_s
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = max(int(wait_timeout_s * 1000), 1)
        self.health = health or StoreHealth()
        self._topology = parse_session_url(url)
        self._sentinel: Sentinel | None = None
        common: dict[str, Any] = {
            "max_connections": POOL_SIZE,
            "socket_connect_timeout": min(timeout_s, 1.0),
            # A timed-out call is abandoned at `timeout_s` (see `_run`); retries are for broken
            # connections (e.g. a pooled one after a Redis restart or a failover) and are
            # safe: every write is idempotent.
            "socket_timeout": socket_timeout_s or timeout_s,
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
            "decode_responses": False,
        }
        if self._topology.tls:
            common.update((tls or TlsFiles()).kwargs())
        self._redis: Any = self._connect(url, common)
        self._append = self._redis.register_script(APPEND_SCRIPT)
        self._page = self._redis.register_script(_PAGE)
        # redis-py's pool raises "Too many connections" once every connection is busy, which
        # turned a burst of 256 concurrent turns into a storm of 503s. A burst waits here for a
        # free connection instead (see `_run`); this costs a fraction of what redis-py's
        # BlockingConnectionPool adds to every command.
        self._slots = asyncio.Semaphore(POOL_SIZE)

    def _connect(self, url: str, common: dict[str, Any]) -> Any:
        topology = self._topology
        if topology.kind == "redis":
            return aioredis.Redis.from_url(url, health_check_interval=15, **common)
        auth: dict[str, Any] = {"username": topology.username, "password": topology.password}
        if topology.kind == "cluster":
            common.pop("retry")  # the cluster client retries on a fresh slot map instead
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in topology.hosts],
                ssl=topology.tls,
                # A turn touches one slot: the others' masters may be failing over meanwhile.
                require_full_coverage=False,
                **auth,
                **common,
            )
        sentinel_kwargs = {
            key: value for key, value in common.items() if key.startswith(("socket_", "ssl_"))
        }
        self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
            topology.hosts,
            sentinel_kwargs={
                **sentinel_kwargs,
                "ssl": topology.tls,
                "username": topology.sentinel_username,
                "password": topology.sentinel_password,
            },
        )
        return self._sentinel.master_for(
            topology.master,
            db=topology.db,
            ssl=topology.tls,
            health_check_interval=15,
            **auth,
            **common,
        )

    async def _run(self, command: Callable[[], Awaitable[_T]]) -> _T:
        """Run one call within `timeout_s` of getting a connection; a failure is StoreUnavailable.

        The wait for a free connection is not the store's time: a burst of turns larger than
        the pool (2,000 streams arriving at once, make bench) waits its turn within the
        request's own bound (`queue_timeout_s`), and the store is not marked down for it.
        """
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._queue_timeout_s):
                    await self._slots.acquire()
            except TimeoutError as err:
                raise StoreUnavailable("no free connection: the worker is overloaded") from err
        else:
            await self._slots.acquire()  # a free slot: returns at once
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await command()
        except TimeoutError as err:
            self.health.saw(False)
            raise StoreUnavailable("timeout") from err
        except (RedisError, RedisClusterException, OSError) as err:
            self.health.saw(False)
            raise StoreUnavailable(_reason(err)) from err
        finally:
            self._slots.release()
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
        # Messages are (de)coded by pydantic's Rust JSON functions: a turn decodes its whole
        # window, and the standard library's json took 4-5 times as long (hack/bench/HISTORY.md).
        history_key, _, turns_key, _ = session_keys(session_id)
        if turn_id is None:
            raw = await self._run(lambda: self._redis.lrange(history_key, -limit, -1))
            return Context([from_json(item) for item in raw], None)

        async def both() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.lrange(history_key, -limit, -1)
                pipe.hget(turns_key, turn_id)
                return list(await pipe.execute())

        raw, record = await self._run(both)
        return Context(
            [from_json(item) for item in raw], None if record is None else record.decode()
        )

    async def append(
        self, session_id: str, turn_id: str, record: str, messages: Sequence[Message]
    ) -> str | None:
        encoded = [to_json(m) for m in messages]
        args: list[str | int | bytes] = [
            turn_id,
            record,
            self._ttl_s,
            self._max_messages,
            self._max_turns,
            *encoded,
        ]
        keys = session_keys(session_id)
        if self._wait_replicas:
            reply = await self._run(lambda: self._append_and_wait(keys, args))
        else:
            reply = await self._run(lambda: self._append(keys=keys, args=args))
        return None if reply[0] == 1 else bytes(reply[1]).decode()

    async def _append_and_wait(self, keys: list[str], args: list[str | int | bytes]) -> Any:
        """APPEND_SCRIPT then WAIT, pipelined on one connection to the session's master.

        WAIT counts the replicas that have every write of its own connection, so both must
        travel together. A server without the script (a promoted replica, a restart) gets the
        script itself on the second try.
        """
        script: list[Any] = ["EVALSHA", self._append.sha]
        for _ in range(2):
            commands = [
                [*script, len(keys), *keys, *args],
                ["WAIT", self._wait_replicas, self._wait_timeout_ms],
            ]
            if self._topology.kind == "cluster":
                reply, acked = await self._on_slot_master(keys[0], commands)
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for command in commands:
                        pipe.execute_command(*command)
                    reply, acked = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError):
                script = ["EVAL", APPEND_SCRIPT]
                continue
            if isinstance(reply, MovedError):
                # The slot has a new master (a failover): nothing ran; write there instead.
                await self._redis.nodes_manager.move_slot(reply)
                continue
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acked, Exception):
                raise acked
            if int(acked) < self._wait_replicas:
                raise StoreUnavailable(
                    f"only {acked} of {self._wait_replicas} replicas acknowledged the write "
                    f"within {self._wait_timeout_ms} ms"
                )
            return reply
        raise StoreUnavailable("the write found no master that could run it")

    async def _on_slot_master(self, key: str, commands: list[list[Any]]) -> list[Any]:
        """Commands pipelined on one connection to the master of `key`'s slot; replies or errors.

        redis-py's cluster pipeline refuses EVALSHA, and would route a retried WAIT (it has no
        key) to other nodes; one node's own pipeline keeps the WAIT with the write it counts.
        A broken connection raises: the next call through the cluster client reads the slot
        map again.
        """
        await self._redis.initialize()  # the slot map, once (a no-op afterwards)
        node = self._redis.get_node_from_key(key)
        batch = [PipelineCommand(i, *command) for i, command in enumerate(commands)]
        await node.execute_pipeline(batch)
        return [command.result for command in batch]

    async def page(self, session_id: str, limit: int, before: int | None) -> Page | None:
        keys = session_keys(session_id)[:2]
        args = [limit, -1 if before is None else before]
        reply = await self._run(lambda: self._page(keys=keys, args=args))
        if not reply:
            return None
        return Page(int(reply[0]), int(reply[1]), [from_json(item) for item in reply[2:]])

    async def delete(self, session_id: str) -> bool:
        keys = session_keys(session_id)
        return bool(await self._run(lambda: self._redis.delete(*keys)))

    async def aclose(self) -> None:
        await self._redis.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()


# OpenSSL's names of the alerts a server sends when it rejects the client's certificate.
_PEER_REFUSED_CERT = (
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
)


def _reason(err: BaseException) -> str:
    """Why a store call failed, for logs; a TLS verification failure says what to check."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return (
                f"TLS verification of the session store failed ({seen.verify_message}): "
                "check AGENT_SESSION_CA_FILE and the server's certificate"
            )
        if isinstance(seen, ssl.SSLError):
            if seen.reason is not None and "CERTIFICATE_REQUIRED" in seen.reason:
                return (
                    "the session store requires a client certificate: set "
                    "AGENT_SESSION_CERT_FILE and AGENT_SESSION_KEY_FILE"
                )
            if seen.reason is not None and seen.reason.startswith(_PEER_REFUSED_CERT):
                return (
                    f"the session store refused the client certificate ({seen.reason}): "
                    "check AGENT_SESSION_CERT_FILE and AGENT_SESSION_KEY_FILE"
                )
            return f"TLS handshake with the session store failed ({seen.reason})"
        seen = seen.__cause__ or seen.__context__
    return type(err).__name__


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
    tls: TlsFiles | None = None,
    wait_replicas: int = 0,
    wait_timeout_s: float = 0.5,
    queue_timeout_s: float = 30.0,
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
    return RedisStore(
        url,
        ttl_s,
        max_messages=max_messages,
        timeout_s=timeout_s,
        health=health,
        tls=tls,
        wait_replicas=wait_replicas,
        wait_timeout_s=wait_timeout_s,
        queue_timeout_s=queue_timeout_s,
    )
