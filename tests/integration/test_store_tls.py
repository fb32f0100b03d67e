"""Sessions on a TLS-only Redis: the right CA serves turns, a wrong one never falls back.

A real Debian redis-server (built with TLS) listens on a TLS port only (`port 0`: no plain-text
listener at all), with a CA and certificates made here by the openssl CLI. The server logs
every connection that fails its handshake, so its log tells a plain-text attempt ("wrong
version number") from a TLS client that broke the handshake off (it refused the certificate).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from agent_service.store import session_key
from tests.conftest import free_port, require_binary
from tests.integration.conftest import SECRET, Service, wait_until

PLAIN_TEXT_ATTEMPT = "wrong version number"  # what OpenSSL says of a plain-text client
SENTINEL_MASTER = "sessions"


@dataclass(frozen=True)
class Pki:
    """A CA that signed the server's and a client's certificate, and an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    stranger_cert: Path  # a client certificate the other CA signed
    stranger_key: Path


def _openssl(*args: str) -> None:
    subprocess.run([require_binary("openssl"), *args], capture_output=True, check=True, timeout=60)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN=Moorage test {name}", "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return cert, key


def _issue(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions + "\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(csr),
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext_file), "-out", str(cert),
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = _ca(directory, "ca")
    # The service checks the host name: the certificate names the address it is reached at. The
    # servers also present it as clients of each other (the cluster bus, replication).
    server = _issue(
        directory,
        "server",
        ca,
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth",
    )
    client = _issue(directory, "agent", ca, "extendedKeyUsage=clientAuth")
    other_ca = _ca(directory, "other-ca")
    stranger = _issue(directory, "stranger", other_ca, "extendedKeyUsage=clientAuth")
    return Pki(ca[0], *server, *client, other_ca[0], *stranger)


@dataclass
class TlsRedis:
    """A redis-server (or sentinel) with a TLS port and no plain-text port; its log kept."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    pki: Pki
    password: str | None = SECRET

    @property
    def url(self) -> str:
        return f"rediss://:{SECRET}@127.0.0.1:{self.port}/0"

    def call(self, command: str, *args: Any) -> Any:
        """One command over a TLS connection of the test's own (closed afterwards)."""
        with redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            ssl=True,
            ssl_ca_certs=str(self.pki.ca),
            ssl_certfile=str(self.pki.client_cert),
            ssl_keyfile=str(self.pki.client_key),
            socket_timeout=2,
        ) as client:
            return getattr(client, command)(*args)

    def handshake_errors(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if "SSL routines" in line]

    def answers(self) -> bool:
        try:
            return bool(self.call("ping"))
        except (redis.RedisError, OSError):
            return False


def _tls_only(pki: Pki, port: int, log: Path, *, client_certs: bool) -> list[tuple[str, ...]]:
    """Configuration of a server that speaks TLS only, to clients and to its own master."""
    return [
        ("port", "0"),  # no plain-text listener at all
        ("tls-port", str(port)),
        ("bind", "127.0.0.1"),
        ("tls-cert-file", str(pki.server_cert)),
        ("tls-key-file", str(pki.server_key)),
        ("tls-ca-cert-file", str(pki.ca)),
        ("tls-auth-clients", "yes" if client_certs else "no"),
        ("tls-replication", "yes"),  # replicas and sentinels reach their master over TLS
        ("logfile", str(log)),
    ]


@pytest.fixture
def tls_redis(redis_binary: str, pki: Pki, tmp_path: Path) -> Iterator[Callable[..., TlsRedis]]:
    """Factory: a TLS-only redis-server; `client_certs=True` requires a client certificate,
    `replica_of` makes it a replica, `cluster_node` a node of a cluster yet to be created, and
    `sentinel_of` a sentinel watching that master instead."""
    started: list[TlsRedis] = []

    def start(
        *,
        client_certs: bool = False,
        replica_of: TlsRedis | None = None,
        cluster_node: bool = False,
        sentinel_of: TlsRedis | None = None,
    ) -> TlsRedis:
        port = free_port()
        log = tmp_path / f"redis-{port}.log"
        config = _tls_only(pki, port, log, client_certs=client_certs)
        if sentinel_of is not None:
            conf = tmp_path / f"sentinel-{port}.conf"
            config += [
                ("dir", str(tmp_path)),
                ("sentinel", "monitor", SENTINEL_MASTER, "127.0.0.1", str(sentinel_of.port), "1"),
                ("sentinel", "auth-pass", SENTINEL_MASTER, SECRET),
            ]
            conf.write_text("".join(" ".join(line) + "\n" for line in config))
            command = [redis_binary, str(conf), "--sentinel"]
        else:
            config += [
                ("requirepass", SECRET),
                ("masterauth", SECRET),
                ("save", "''"),
                ("appendonly", "no"),
                ("repl-diskless-sync-delay", "0"),
                ("dir", str(tmp_path)),
            ]
            if replica_of is not None:
                config.append(("replicaof", "127.0.0.1", str(replica_of.port)))
            if cluster_node:
                config += [
                    ("cluster-enabled", "yes"),
                    ("tls-cluster", "yes"),  # the cluster bus speaks TLS too
                    ("cluster-port", str(free_port())),
                    ("cluster-config-file", f"nodes-{port}.conf"),
                ]
            command = [redis_binary, *(arg for line in config for arg in _flag(line))]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = TlsRedis(port, proc, log, pki, None if sentinel_of else SECRET)
        started.append(server)
        wait_until(server.answers, 30, "the TLS redis-server to answer PING over TLS")
        return server

    yield start
    for server in started:
        server.proc.kill()
        server.proc.wait(timeout=10)


def _flag(line: tuple[str, ...]) -> list[str]:
    """A configuration line as redis-server's command-line arguments."""
    name, *values = line
    return [f"--{name}", *(v.strip("'") for v in values)]


def _chat(service: Service, session_id: str, message: str) -> httpx.Response:
    return httpx.post(
        service.url + "/v1/chat", json={"session_id": session_id, "message": message}, timeout=10
    )


def _log_records(service: Service) -> list[dict]:
    records = []
    for line in service.output().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _warmup_errors(service: Service) -> list[str]:
    return [
        str(r.get("error"))
        for r in _log_records(service)
        if r.get("msg") == "session store not answering yet"
    ]


def _assert_not_ready_with(service: Service, fragment: str) -> str:
    """The service stays unready and says why in one log line (no traceback, no secret)."""
    wait_until(
        lambda: any(fragment in e for e in _warmup_errors(service)),
        30,
        f"a warm-up log line saying {fragment!r}",
        service,
    )
    ready = httpx.get(service.url + "/readyz", timeout=5)
    assert ready.status_code == 503
    assert ready.json()["status"] == "not-ready"
    assert _chat(service, "tls-refused", "hello").status_code == 503
    output = service.output()
    assert "Traceback" not in output
    assert SECRET not in output
    return next(e for e in _warmup_errors(service) if fragment in e)


def test_the_right_ca_serves_turns_over_tls_only(tls_redis, pki: Pki, start_service) -> None:
    server = tls_redis()
    service = start_service(AGENT_SESSION_URL=server.url, AGENT_SESSION_CA_FILE=str(pki.ca))
    service.wait_ready()

    for n in range(3):
        assert _chat(service, "tls-session", f"turn {n}").status_code == 200

    history = server.call("lrange", session_key("tls-session"), 0, -1)
    assert [json.loads(m)["content"] for m in history][::2] == ["turn 0", "turn 1", "turn 2"]
    # The server has no plain-text listener, and the service never tried plain text on the
    # TLS port (the server would have logged the failed handshake).
    assert server.call("config_get", "port") == {"port": "0"}
    assert server.handshake_errors() == []
    # The check above can fail: a plain-text client is refused and logged.
    with pytest.raises(redis.ConnectionError):
        redis.Redis("127.0.0.1", server.port, password=SECRET, socket_timeout=1).ping()
    wait_until(
        lambda: any(PLAIN_TEXT_ATTEMPT in line for line in server.handshake_errors()),
        10,
        "the server to log the plain-text attempt",
    )


def test_a_wrong_ca_fails_readiness_at_start_and_never_falls_back_to_plain_text(
    tls_redis, pki: Pki, start_service
) -> None:
    server = tls_redis()
    service = start_service(AGENT_SESSION_URL=server.url, AGENT_SESSION_CA_FILE=str(pki.other_ca))
    service.wait_healthy()

    line = _assert_not_ready_with(service, "check AGENT_SESSION_CA_FILE")

    assert line.startswith("TLS verification of the session store failed"), line
    # Every attempt was a TLS handshake that the service broke off, none was in plain text.
    wait_until(server.handshake_errors, 10, "the server to log the broken-off handshakes")
    errors = server.handshake_errors()
    assert not any(PLAIN_TEXT_ATTEMPT in e for e in errors), errors
    assert server.call("dbsize") == 0


def test_a_client_certificate_is_presented_when_the_server_requires_one(
    tls_redis, pki: Pki, start_service
) -> None:
    server = tls_redis(client_certs=True)
    service = start_service(
        AGENT_SESSION_URL=server.url,
        AGENT_SESSION_CA_FILE=str(pki.ca),
        AGENT_SESSION_CERT_FILE=str(pki.client_cert),
        AGENT_SESSION_KEY_FILE=str(pki.client_key),
    )
    service.wait_ready()
    assert _chat(service, "mtls-session", "hello").status_code == 200
    assert server.call("exists", session_key("mtls-session")) == 1

    without = start_service(AGENT_SESSION_URL=server.url, AGENT_SESSION_CA_FILE=str(pki.ca))
    stranger = start_service(
        AGENT_SESSION_URL=server.url,
        AGENT_SESSION_CA_FILE=str(pki.ca),
        AGENT_SESSION_CERT_FILE=str(pki.stranger_cert),
        AGENT_SESSION_KEY_FILE=str(pki.stranger_key),
    )
    without.wait_healthy()
    stranger.wait_healthy()
    _assert_not_ready_with(without, "requires a client certificate: set AGENT_SESSION_CERT_FILE")
    _assert_not_ready_with(stranger, "refused the client certificate")


def test_a_tls_sentinel_finds_a_tls_master_whose_replica_acknowledges_each_turn(
    tls_redis, pki: Pki, start_service
) -> None:
    master = tls_redis()
    replica = tls_redis(replica_of=master)
    sentinel = tls_redis(sentinel_of=master)
    wait_until(
        lambda: master.call("info", "replication").get("slave0", {}).get("state") == "online",
        30,
        "the replica to sync over TLS",
    )
    url = f"rediss+sentinel://:{SECRET}@127.0.0.1:{sentinel.port}/{SENTINEL_MASTER}"
    service = start_service(AGENT_SESSION_URL=url, AGENT_SESSION_CA_FILE=str(pki.ca))
    service.wait_ready()

    for n in range(3):  # WAIT 1, the default with Sentinel: the replica has each turn
        assert _chat(service, "tls-sentinel", f"turn {n}").status_code == 200

    history = replica.call("lrange", session_key("tls-sentinel"), 0, -1)
    assert [json.loads(m)["content"] for m in history][::2] == ["turn 0", "turn 1", "turn 2"]
    for server in (master, replica, sentinel):
        assert server.handshake_errors() == [], server.handshake_errors()


def test_a_tls_cluster_serves_sessions_on_every_master(tls_redis, pki: Pki, start_service) -> None:
    nodes = [tls_redis(cluster_node=True) for _ in range(3)]
    subprocess.run(
        [
            require_binary("redis-cli"), "--tls", "--cacert", str(pki.ca),
            "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-yes",
        ],
        env={"REDISCLI_AUTH": SECRET},
        capture_output=True,
        check=True,
        timeout=60,
    )  # fmt: skip
    wait_until(
        lambda: all(n.call("cluster", "info").get("cluster_state") == "ok" for n in nodes),
        30,
        "the TLS cluster to cover every slot",
    )
    url = "rediss+cluster://:" + SECRET + "@" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    # No replicas here (test_store_cluster.py proves failover): acknowledge without WAIT.
    service = start_service(
        AGENT_SESSION_URL=url, AGENT_SESSION_CA_FILE=str(pki.ca), AGENT_SESSION_MIN_REPLICAS="0"
    )
    service.wait_ready()

    for n in range(30):
        assert _chat(service, f"tls-cluster-{n}", "hello").status_code == 200

    assert all(node.call("dbsize") > 0 for node in nodes), "a master holds no session"
    for node in nodes:
        assert node.handshake_errors() == [], node.handshake_errors()
