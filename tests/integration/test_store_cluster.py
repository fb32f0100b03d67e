"""Sessions on Redis Cluster: spread over the slots, and a master killed under load.

Real Debian redis-server processes in cluster mode on loopback: three masters with one replica
each, joined by `redis-cli --cluster create`. The services follow the slot map with redis-py's
cluster client; every key of one session carries its hash tag, so a turn's script runs on one
node. With WAIT on (the default with Cluster) a turn is acknowledged only once the shard's
replica has it. When a master is SIGKILLed its replica takes over; the killed node is started
again (as Kubernetes would restart its pod) and rejoins as the new master's replica, which is
what lets that shard acknowledge turns again (see the README on the WAIT trade-off).
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from agent_service.store import KEY_PREFIX, session_key, session_keys
from tests.conftest import free_port, require_binary
from tests.integration.conftest import SECRET, wait_until
from tests.integration.failover import (
    CLIENT_TIMEOUT_S,
    Load,
    assert_failover_lost_nothing,
    kill_under_load,
    recovered_turns,
    redis_process,
    report,
)

MASTERS = 3
NODE_TIMEOUT_MS = 1000


@dataclass
class Cluster:
    """Six cluster-mode redis-servers on loopback: three masters, one replica each."""

    binary: str
    tmp: Path
    ports: list[int]
    bus_ports: dict[int, int] = field(default_factory=dict)
    nodes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, port: int) -> None:
        """Start (or restart: nodes.conf in its directory remembers the cluster) one node."""
        old = self.nodes.get(port)
        if old is not None:
            old.wait(timeout=10)  # killed before: reap it
        self.nodes[port] = redis_process(
            self.binary, port, self.tmp / f"node-{port}",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # The bus port is port + 10000 by default, which a free port may not have.
            "--cluster-port", str(self.bus_ports[port]),
            # A shard failing over leaves the other shards serving their sessions.
            "--cluster-require-full-coverage", "no",
        )  # fmt: skip

    def url(self) -> str:
        """A session URL naming every master as a startup node."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.masters())
        return f"redis+cluster://:{SECRET}@{hosts}"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=SECRET, socket_timeout=1)

    def _live_port(self) -> int:
        return next(p for p, proc in self.nodes.items() if proc.poll() is None)

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Each master's port and its slot ranges, as a live node sees them."""
        owned: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for start, end, master, *_ in self.client(self._live_port()).execute_command(
            "CLUSTER", "SLOTS"
        ):
            owned[int(master[1])].append((int(start), int(end)))
        return dict(owned)

    def master_of(self, slot: int) -> int:
        return next(
            port
            for port, ranges in self.masters().items()
            if any(start <= slot <= end for start, end in ranges)
        )

    def slot(self, key: str) -> int:
        """The key's slot, computed by a server (not by the client library under test)."""
        return int(self.client(self._live_port()).execute_command("CLUSTER", "KEYSLOT", key))

    def replica_of(self, master: int) -> int:
        client = self.client(master)
        master_id = client.execute_command("CLUSTER", "MYID").decode()
        lines = client.execute_command("CLUSTER", "REPLICAS", master_id)
        return int(lines[0].decode().split()[1].split("@")[0].rsplit(":", 1)[1])

    def healthy(self) -> bool:
        """Every node up and agreeing: slots covered, three masters each with a synced replica."""
        try:
            for port in self.ports:
                info = self.client(port).execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info or "cluster_known_nodes:6" not in info:
                    return False
            masters = self.masters()
            return len(masters) == MASTERS and all(
                self.client(m).info("replication").get("slave0", {}).get("state") == "online"
                for m in masters
            )
        except (redis.RedisError, StopIteration):
            return False


@pytest.fixture
def cluster(redis_binary: str, tmp_path: Path) -> Iterator[Cluster]:
    redis_cli = require_binary("redis-cli")
    ports = [free_port() for _ in range(2 * MASTERS)]
    cluster = Cluster(redis_binary, tmp_path, ports, {p: free_port() for p in ports})
    try:
        for port in ports:
            cluster.start(port)
        wait_until(lambda: all(_pings(cluster, p) for p in ports), 30, "six cluster nodes")
        subprocess.run(
            [
                redis_cli, "--cluster", "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas", "1", "--cluster-yes",
            ],
            env={"REDISCLI_AUTH": SECRET},  # not -a: the password stays off the command line
            capture_output=True,
            check=True,
            timeout=60,
        )  # fmt: skip
        wait_until(cluster.healthy, 60, "three masters, each with a synced replica")
        yield cluster
    finally:
        for proc in cluster.nodes.values():
            proc.kill()
            proc.wait(timeout=10)


def _pings(cluster: Cluster, port: int) -> bool:
    try:
        return bool(cluster.client(port).ping())
    except redis.RedisError:
        return False


def _session_of(key: str) -> str:
    """The session id in one of its keys: `moorage:session:<id>` or `{moorage:session:<id>}:…`."""
    if key.startswith("{"):
        return key[1 : key.index("}")].removeprefix(KEY_PREFIX)
    return key.removeprefix(KEY_PREFIX)


async def _turns(url: str, sessions: list[str], per_session: int) -> list[int]:
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:

        async def turn(session_id: str, n: int) -> int:
            async with limit:
                response = await client.post(
                    url + "/v1/chat", json={"session_id": session_id, "message": f"m{n}"}
                )
                return response.status_code

        statuses: list[int] = []
        for n in range(per_session):  # in order: turn n of every session before turn n + 1
            statuses += await asyncio.gather(*(turn(s, n) for s in sessions))
        return statuses


def test_sessions_spread_over_every_master_and_each_lives_in_one_slot(
    cluster: Cluster, start_service, request: pytest.FixtureRequest
) -> None:
    service = start_service(AGENT_SESSION_URL=cluster.url())
    service.wait_ready()
    sessions = [f"spread-{i}" for i in range(300)]

    statuses = asyncio.run(_turns(service.url, sessions, per_session=2))

    assert Counter(statuses) == {200: 2 * len(sessions)}
    keys_by_session: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for master in cluster.masters():
        for key in cluster.client(master).scan_iter(match=f"*{KEY_PREFIX}*", count=1000):
            keys_by_session[_session_of(key.decode())].append((master, key.decode()))
    assert set(keys_by_session) == set(sessions)
    slots: set[int] = set()
    for session_id, keys in keys_by_session.items():
        # Its history, sequence, turn records and turn ids, and whatever else a turn keeps per
        # session (its usage, say): on one master, in one slot.
        assert set(session_keys(session_id)) <= {key for _, key in keys}, keys
        assert len({master for master, _ in keys}) == 1, keys
        key_slots = {cluster.slot(key) for _, key in keys}
        assert key_slots == {cluster.slot(session_key(session_id))}, keys
        slots |= key_slots
    per_master = Counter(keys[0][0] for keys in keys_by_session.values())
    assert set(per_master) == set(cluster.masters()), "a master holds no session"
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        for session_id in sessions[:20]:
            history = client.get(f"{service.url}/v1/sessions/{session_id}").json()["messages"]
            assert [m["content"] for m in history if m["role"] == "user"] == ["m0", "m1"]
    spread = sorted(per_master.values())
    report(request, f"{len(sessions)} sessions in {len(slots)} slots; per master: {spread}")


def test_a_cluster_master_failover_under_load_loses_no_acknowledged_turn(
    cluster: Cluster, start_service, request: pytest.FixtureRequest
) -> None:
    services = [
        start_service(AGENT_SESSION_URL=cluster.url(), AGENT_STORE_TIMEOUT_S="1") for _ in range(2)
    ]
    for service in services:
        service.wait_ready()
    sessions = [f"cluster-{i}" for i in range(36)]
    master_of = {s: cluster.master_of(cluster.slot(session_key(s))) for s in sessions}
    assert set(master_of.values()) == set(cluster.masters()), "a master holds no session"
    victim = master_of[sessions[0]]
    replica = cluster.replica_of(victim)
    affected = {s for s, m in master_of.items() if m == victim}
    promoted_at: list[float] = []

    def rejoin() -> None:
        """Once the replica took over, start the killed node again (it rejoins as a replica)."""
        wait_until(
            lambda: cluster.client(replica).info("replication")["role"] == "master",
            30,
            "the replica to take over the killed master's slots",
        )
        promoted_at.append(time.monotonic())
        cluster.start(victim)

    watcher = threading.Thread(target=rejoin)

    def kill() -> None:
        cluster.nodes[victim].kill()
        watcher.start()

    load = Load([s.url for s in services], sessions)
    killed_at = kill_under_load(load, kill, affected)
    watcher.join(timeout=40)

    assert promoted_at, "the killed master's replica never took over"
    assert cluster.master_of(cluster.slot(session_key(sessions[0]))) == replica
    figures = assert_failover_lost_nothing(
        load, killed_at, services[1].url, [s.proc for s in services], affected
    )
    # The other shards kept serving their sessions while this one had no master.
    others_served = [
        t
        for t in load.ok()
        if t.session_id not in affected and killed_at <= t.started and t.ended <= promoted_at[0]
    ]
    assert others_served, "no session on another master was served during the failover"
    # WAIT was on: every master now serving (the promoted one too) ran it after the writes.
    for master in cluster.masters():
        assert cluster.client(master).info("commandstats")["cmdstat_wait"]["calls"] > 0
    first_affected_200 = min(t.ended for t in recovered_turns(load, killed_at, affected))
    report(
        request,
        f"{figures.line()} (sessions on the killed master: {len(affected)} of "
        f"{len(sessions)}); replica promoted {promoted_at[0] - killed_at:.2f} s after the kill, "
        f"first 200 there {first_affected_200 - promoted_at[0]:.2f} s after the promotion; "
        f"{len(others_served)} turns on other masters served meanwhile",
    )
