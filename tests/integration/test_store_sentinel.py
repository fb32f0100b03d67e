"""Sessions on Redis Sentinel: a master killed under load from two service replicas.

Real Debian redis-server processes on loopback: one master, two replicas, three sentinels
(`redis-server --sentinel`). The services find the master through the sentinels (redis-py's
Sentinel client) and acknowledge a turn only once a replica has it (WAIT, the default with
Sentinel). After the master is SIGKILLed, every turn that got a 200 must be in its session's
history, requests meanwhile answer 503 `store-unavailable`, and the same processes serve again.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port
from tests.integration.conftest import SECRET, wait_until
from tests.integration.failover import (
    Load,
    assert_failover_lost_nothing,
    kill_under_load,
    redis_process,
    report,
)

MASTER_NAME = "sessions"


@dataclass
class Sentinels:
    """Three redis-servers (one master) and three sentinels watching them, on loopback."""

    servers: dict[int, subprocess.Popen[bytes]]
    sentinel_ports: list[int]

    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://:{SECRET}@{hosts}/{MASTER_NAME}/0"

    def master_port(self) -> int:
        client = redis.Redis(port=self.sentinel_ports[0])
        _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)


@pytest.fixture
def sentinels(redis_binary: str, tmp_path: Path) -> Iterator[Sentinels]:
    ports = [free_port() for _ in range(3)]
    master = ports[0]
    procs: list[subprocess.Popen[bytes]] = []
    servers: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for port in ports:
            extra = () if port == master else ("--replicaof", "127.0.0.1", str(master))
            servers[port] = redis_process(redis_binary, port, tmp_path / f"redis-{port}", *extra)
            procs.append(servers[port])
        sentinel_ports = [free_port() for _ in range(3)]
        for port in sentinel_ports:
            conf = tmp_path / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n"
                f"sentinel auth-pass {MASTER_NAME} {SECRET}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 2\n"
            )
            procs.append(
                subprocess.Popen(
                    [redis_binary, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        wait_until(
            lambda: all(_sentinel_sees_all(p) for p in sentinel_ports),
            60,
            "three sentinels that see the master, two replicas and each other",
        )
        yield Sentinels(servers, sentinel_ports)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def _sentinel_sees_all(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        replicas = client.sentinel_slaves(MASTER_NAME)
        others = client.sentinel_sentinels(MASTER_NAME)
    except redis.RedisError:
        return False
    up = [r for r in replicas if "s_down" not in r["flags"] and r["master-link-status"] == "ok"]
    return len(up) == 2 and len(others) == 2


def test_a_sentinel_failover_under_load_loses_no_acknowledged_turn(
    sentinels: Sentinels, start_service, request: pytest.FixtureRequest
) -> None:
    services = [
        start_service(AGENT_SESSION_URL=sentinels.url(), AGENT_STORE_TIMEOUT_S="1")
        for _ in range(2)
    ]
    for service in services:
        service.wait_ready()
    load = Load([s.url for s in services], [f"sentinel-{i}" for i in range(24)])
    old_master = sentinels.master_port()

    killed_at = kill_under_load(load, sentinels.servers[old_master].kill)

    assert sentinels.master_port() != old_master, "the sentinels did not fail over"
    new_master = redis.Redis(port=sentinels.master_port(), password=SECRET)
    assert new_master.info("commandstats")["cmdstat_wait"]["calls"] > 0, "WAIT was off"
    figures = assert_failover_lost_nothing(
        load, killed_at, services[1].url, [s.proc for s in services]
    )
    report(request, figures.line())
