"""Sessions on a TLS-only Redis: the right CA serves turns, a wrong one never falls back.

A real Debian redis-server (built with TLS) listens on a TLS port only (`port 0`: no plain-text
listener at all), with a CA and certificates made here by the openssl CLI. The server logs
every connection that fails its handshake, so its log tells a plain-text attempt ("wrong
version number") from a client that refused the server's certificate ("unknown ca").
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from agent_service.store import session_key
from tests.conftest import free_port, require_binary
from tests.integration.conftest import SECRET, Service, wait_until

PLAIN_TEXT_ATTEMPT = "wrong version number"  # what OpenSSL says of a plain-text client


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
    # The service checks the host name: the certificate names the address it is reached at.
    server = _issue(
        directory, "server", ca, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"
    )
    client = _issue(directory, "agent", ca, "extendedKeyUsage=clientAuth")
    other_ca = _ca(directory, "other-ca")
    stranger = _issue(directory, "stranger", other_ca, "extendedKeyUsage=clientAuth")
    return Pki(ca[0], *server, *client, other_ca[0], *stranger)


@dataclass
class TlsRedis:
    """A redis-server with a TLS port and no plain-text port; its log file kept for checks."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    pki: Pki

    @property
    def url(self) -> str:
        return f"rediss://:{SECRET}@127.0.0.1:{self.port}/0"

    def tls_client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=SECRET,
            ssl=True,
            ssl_ca_certs=str(self.pki.ca),
            ssl_certfile=str(self.pki.client_cert),
            ssl_keyfile=str(self.pki.client_key),
            socket_timeout=2,
        )

    def handshake_errors(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if "SSL routines" in line]

    def answers(self) -> bool:
        try:
            return bool(self.tls_client().ping())
        except (redis.RedisError, OSError):
            return False


@pytest.fixture
def tls_redis(redis_binary: str, pki: Pki, tmp_path: Path) -> Iterator[Callable[..., TlsRedis]]:
    """Factory: a TLS-only redis-server; `client_certs=True` requires a client certificate."""
    started: list[TlsRedis] = []

    def start(*, client_certs: bool = False) -> TlsRedis:
        port = free_port()
        log = tmp_path / f"redis-{port}.log"
        proc = subprocess.Popen(
            [
                redis_binary,
                "--port", "0",  # no plain-text listener at all
                "--tls-port", str(port),
                "--bind", "127.0.0.1",
                "--tls-cert-file", str(pki.server_cert),
                "--tls-key-file", str(pki.server_key),
                "--tls-ca-cert-file", str(pki.ca),
                "--tls-auth-clients", "yes" if client_certs else "no",
                "--requirepass", SECRET,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(tmp_path),
                "--logfile", str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        server = TlsRedis(port, proc, log, pki)
        started.append(server)
        wait_until(server.answers, 30, "the TLS redis-server to answer PING over TLS")
        return server

    yield start
    for server in started:
        server.proc.kill()
        server.proc.wait(timeout=10)


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


def test_the_right_ca_serves_turns_over_tls_only(
    tls_redis, pki: Pki, start_service, request: pytest.FixtureRequest
) -> None:
    server = tls_redis()
    service = start_service(AGENT_SESSION_URL=server.url, AGENT_SESSION_CA_FILE=str(pki.ca))
    service.wait_ready()

    for n in range(3):
        assert _chat(service, "tls-session", f"turn {n}").status_code == 200

    history = server.tls_client().lrange(session_key("tls-session"), 0, -1)
    assert [json.loads(m)["content"] for m in history][::2] == ["turn 0", "turn 1", "turn 2"]
    # The server has no plain-text listener, and the service never tried plain text on the
    # TLS port (the server would have logged the failed handshake).
    assert server.tls_client().config_get("port") == {"port": "0"}
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
    assert server.tls_client().dbsize() == 0


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
    assert server.tls_client().exists(session_key("mtls-session")) == 1

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
