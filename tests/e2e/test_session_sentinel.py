"""The chart on the real node with Sentinel: one conversation across a Redis master failover.

Real Debian redis-server processes on the host, bound to the node's address so the pods reach
them: one master, two replicas and three sentinels. The chart gets the `redis+sentinel://` URL
through its Secret and acknowledges a turn only once a replica has it (WAIT). The master is
SIGKILLed mid-conversation: turns answer 503 `store-unavailable` until the sentinels promote a
replica (the client retries those, bounded, with the same Idempotency-Key), then 200 again from
the same pods; the stored history holds every acknowledged turn, once, in order.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from tests.conftest import require
from tests.e2e.conftest import Cluster, wait_until
from tests.e2e.realnode import (
    CHART,
    free_port,
    get_json,
    helm,
    image_values,
    node_ip,
    pods,
    post_json_with_headers,
    ready,
    service_url,
)
from tests.integration.conftest import SECRET
from tests.integration.failover import redis_process, report

MASTER_NAME = "sessions"
RELEASE = "agent"
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
SESSION = "sentinel-conversation"
TURNS_BEFORE_KILL = 4
TURNS_AFTER_FAILOVER = 4
# How long one turn may keep answering 503 before the test gives up on the failover.
RETRY_BOUND_S = 60.0


@dataclass
class HostSentinels:
    """Three redis-servers (one master) and three sentinels on the node's address."""

    host: str
    servers: dict[int, subprocess.Popen[bytes]]
    sentinel_ports: list[int]

    def url(self) -> str:
        hosts = ",".join(f"{self.host}:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://:{SECRET}@{hosts}/{MASTER_NAME}/0"

    def master_port(self) -> int:
        client = redis.Redis(
            host=self.host, port=self.sentinel_ports[0], socket_timeout=5, decode_responses=True
        )
        host, port = cast(tuple[str, int], client.sentinel_get_master_addr_by_name(MASTER_NAME))
        assert host == self.host, f"the sentinels name a master on {host}, not the node's address"
        return int(port)

    def sees_all(self, port: int) -> bool:
        """Whether the sentinel on `port` sees the master, two replicas and the other two."""
        client = redis.Redis(host=self.host, port=port, socket_timeout=1)
        try:
            replicas = client.sentinel_slaves(MASTER_NAME)
            others = cast(list[dict[str, Any]], client.sentinel_sentinels(MASTER_NAME))
        except redis.RedisError:
            return False
        up = [r for r in replicas if "s_down" not in r["flags"] and r["master-link-status"] == "ok"]
        return len(up) == 2 and len(others) == 2


@contextlib.contextmanager
def host_sentinels(cluster: Cluster, workdir: Path) -> Iterator[HostSentinels]:
    """Start the six processes on the node's address; kill each by its pid at the end."""
    binary = shutil.which("redis-server")
    require(binary is not None, "redis-server (make apt-deps)")
    assert binary is not None
    host = node_ip(cluster)
    ports = [free_port(host) for _ in range(3)]
    master = ports[0]
    procs: list[subprocess.Popen[bytes]] = []
    servers: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for port in ports:
            extra = () if port == master else ("--replicaof", host, str(master))
            servers[port] = redis_process(
                binary, port, workdir / f"redis-{port}", *extra, host=host
            )
            procs.append(servers[port])
        sentinel_ports = [free_port(host) for _ in range(3)]
        for port in sentinel_ports:
            conf = workdir / f"sentinel-{port}.conf"
            # Short detection and failover bounds, as in tests/integration/test_store_sentinel.py.
            conf.write_text(
                f"port {port}\nbind {host}\nprotected-mode no\ndir {workdir}\n"
                f"sentinel monitor {MASTER_NAME} {host} {master} 2\n"
                f"sentinel auth-pass {MASTER_NAME} {SECRET}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 2\n"
            )
            procs.append(
                subprocess.Popen(
                    [binary, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        sentinels = HostSentinels(host, servers, sentinel_ports)
        wait_until(
            lambda: all(sentinels.sees_all(p) for p in sentinel_ports),
            "three sentinels that see the master, two replicas and each other",
            timeout=60,
            interval=0.5,
        )
        yield sentinels
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


@dataclass(frozen=True)
class Answered:
    """One turn of the conversation: its message, and the 503s it met before its 200."""

    message: str
    unavailable: int
    ended: float


def send_turn(url: str, n: int) -> Answered:
    """One turn, retried with the same Idempotency-Key while it answers 503 store-unavailable."""
    message = f"turn {n} of {SESSION}"
    deadline = time.monotonic() + RETRY_BOUND_S
    unavailable = 0
    while True:
        status, body = post_json_with_headers(
            f"{url}/v1/chat",
            {"session_id": SESSION, "message": message},
            {"Idempotency-Key": f"{SESSION}-{n}"},
        )
        if status == 200:
            assert body["session_id"] == SESSION, body
            return Answered(message, unavailable, time.monotonic())
        # Never a 500, never another error: only the store's documented 503 is retried.
        assert (status, body.get("error")) == (503, "store-unavailable"), (message, status, body)
        unavailable += 1
        assert time.monotonic() < deadline, f"{message}: still 503 after {RETRY_BOUND_S:.0f}s"
        time.sleep(0.2)


def pod_states(cluster: Cluster, namespace: str) -> dict[str, tuple[int, bool]]:
    """Pod uid -> (restart count, Ready) of the release's pods."""
    return {
        p["metadata"]["uid"]: (p["status"]["containerStatuses"][0]["restartCount"], ready(p))
        for p in pods(cluster, namespace, SELECTOR)
    }


def test_the_chart_on_sentinel_serves_a_conversation_across_a_master_failover(
    cluster: Cluster, real_namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with host_sentinels(cluster, tmp_path) as sentinels:
        # A values file, not --set: the URL carries the Redis password.
        values = tmp_path / "values.json"
        values.write_text(
            json.dumps(
                {
                    "replicaCount": 2,
                    "session": {"url": sentinels.url()},
                    # WAIT on, as documented (1 is also the default with Sentinel).
                    "extraEnv": {"AGENT_SESSION_MIN_REPLICAS": "1"},
                }
            )
        )
        helm(
            cluster, "install", RELEASE, str(CHART), "-n", real_namespace, *image_values(),
            "-f", str(values), "--wait", "--timeout", "180s",
        )  # fmt: skip
        # The URL reaches the pods through the chart's Secret, as a file.
        configmap = cluster.kubectl_run(
            "get", "configmap", "-n", real_namespace, "-l", SELECTOR, "-o", "json"
        ).stdout
        assert "redis+sentinel" not in configmap
        assert SECRET not in configmap
        container = pods(cluster, real_namespace, SELECTOR)[0]["spec"]["containers"][0]
        assert "AGENT_SESSION_URL_FILE" in {e["name"] for e in container.get("env", [])}

        url = service_url(cluster, real_namespace, RELEASE)
        before = pod_states(cluster, real_namespace)
        assert len(before) == 2
        assert all(state == (0, True) for state in before.values()), before

        answered = [send_turn(url, n) for n in range(TURNS_BEFORE_KILL)]
        assert all(a.unavailable == 0 for a in answered), answered
        old_master = sentinels.master_port()

        sentinels.servers[old_master].kill()  # SIGKILL, by pid
        killed_at = time.monotonic()
        first_after = send_turn(url, TURNS_BEFORE_KILL)
        answered.append(first_after)
        answered += [
            send_turn(url, n)
            for n in range(TURNS_BEFORE_KILL + 1, TURNS_BEFORE_KILL + 1 + TURNS_AFTER_FAILOVER)
        ]
        # Each pod found the new master itself: one more turn straight to each pod's address.
        for pod in pods(cluster, real_namespace, SELECTOR):
            port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
            answered.append(send_turn(f"http://{pod['status']['podIP']}:{port}", len(answered)))

        new_master = sentinels.master_port()
        assert new_master != old_master, "the sentinels did not fail over"
        assert first_after.unavailable > 0, "no turn met the failover"
        stats = redis.Redis(host=sentinels.host, port=new_master, password=SECRET).info(
            "commandstats"
        )
        assert stats["cmdstat_wait"]["calls"] > 0, "WAIT was off"

        # Every acknowledged turn is stored, once, in order (retries replayed, not duplicated).
        status, history = get_json(f"{url}/v1/sessions/{SESSION}?limit=1000")
        assert status == 200, history
        stored = [m["content"] for m in history["messages"] if m["role"] == "user"]
        assert stored == [a.message for a in answered]

        # The same pods served throughout, never restarted (and Ready, again if a probe failed).
        after = pod_states(cluster, real_namespace)
        assert after.keys() == before.keys(), (before, after)
        assert all(restarts == 0 for restarts, _ in after.values()), after
        wait_until(
            lambda: all(r for _, r in pod_states(cluster, real_namespace).values()),
            "both pods Ready",
            timeout=60,
        )
        assert pod_states(cluster, real_namespace) == dict.fromkeys(before, (0, True))
        report(
            request,
            f"{len(answered)} turns acknowledged, all stored in order; "
            f"{sum(a.unavailable for a in answered)} answered 503 (retried); "
            f"master killed -> first 200 in {first_after.ended - killed_at:.2f} s",
        )
