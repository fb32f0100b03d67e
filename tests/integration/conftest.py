"""Integration tier: real redis-server, real uvicorn processes of the service, real HAProxy.

Every service process gets a known secret as its model API key and Redis password, and every
client API key the tests use contains it; when the session ends, no captured output of any
process may contain it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, require_binary
from tests.integration.fake_openai import FakeOpenAI

SECRET = "sk-moorage-test-7f3a9c1e5b"  # the value that must never appear in any output
PYTHON = sys.executable


@dataclass
class Redis:
    """A redis-server on loopback, stoppable and restartable on the same port."""

    binary: str
    port: int
    workdir: Path
    password: str = SECRET
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--requirepass", self.password,
                "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: self._answers(), what="redis-server to answer PING")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, password=self.password).ping())
        except redis.RedisError:
            return False


@dataclass
class Service:
    """One `agent-service` process; its combined output is kept for the secret check."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 30) -> None:
        wait_until(lambda: self._status("/healthz") == 200, timeout, "service /healthz", self)

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(lambda: self._status("/readyz") == 200, timeout, "service /readyz 200", self)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def _status(self, path: str) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.output()}")
        try:
            return httpx.get(self.url + path, timeout=2).status_code
        except httpx.HTTPError:
            return None


def wait_until(check, timeout: float = 30, what: str = "condition", service=None) -> None:
    """Poll `check` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    detail = f"\n--- service output ---\n{service.output()}" if service is not None else ""
    pytest.fail(f"timed out waiting for {what}{detail}")


_OUTPUTS: list[Path] = []


def service_env(**overrides: str) -> dict[str, str]:
    """The environment of a service process: ours, minus any inherited AGENT_*, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env.update(
        AGENT_MODEL_API_KEY=SECRET,
        AGENT_LOG_LEVEL="info",
        AGENT_DRAIN_DELAY_S="0.5",
        AGENT_SHUTDOWN_TIMEOUT_S="10",
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def redis_binary() -> str:
    return require_binary("redis-server")


@pytest.fixture
def redis_server(redis_binary: str, tmp_path: Path) -> Iterator[Redis]:
    server = Redis(redis_binary, free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_api() -> Iterator[FakeOpenAI]:
    """The fake OpenAI-compatible API on a free port (see `fake_openai`)."""
    fake = FakeOpenAI(free_port())
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator:
    """Factory: start an `agent-service` process with AGENT_* overrides; stopped at teardown."""
    started: list[Service] = []

    def start(**overrides: str) -> Service:
        port = int(overrides.get("AGENT_PORT") or free_port())
        env = service_env(**{"AGENT_PORT": str(port), **overrides})
        log_path = tmp_path / f"service-{len(started)}-{port}.log"
        _OUTPUTS.append(log_path)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [PYTHON, "-m", "agent_service"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group, so teardown reaches worker processes
            )
        service = Service(port, proc, log_path, env)
        started.append(service)
        return service

    yield start
    for service in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.proc.pid, signal.SIGKILL)
        service.proc.wait(timeout=10)


def run_service_once(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    """Run `agent-service` expecting it to exit by itself (bad configuration)."""
    result = subprocess.run(
        [PYTHON, "-m", "agent_service"],
        env=service_env(**{"AGENT_PORT": str(free_port()), **overrides}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    out = tmp_path / f"once-{len(_OUTPUTS)}.log"
    out.write_text(result.stdout + result.stderr)
    _OUTPUTS.append(out)
    return result


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_output() -> Iterator[None]:
    """After the whole tier: the secret appears in no captured output of any process."""
    yield
    leaks = [p for p in _OUTPUTS if p.exists() and SECRET in p.read_text(errors="replace")]
    assert not leaks, f"the secret leaked into: {leaks}"


def haproxy_config(
    port: int, backends: list[int], *, stats_port: int | None = None, redispatch: bool = False
) -> str:
    """HAProxy in front of service replicas, checking /readyz every 200 ms (fall 1, rise 2).

    `redispatch` retries a failed connection on another replica; `stats_port` serves /stats.
    """
    servers = "\n".join(f"    server r{i} 127.0.0.1:{p} check" for i, p in enumerate(backends))
    retry = "    retries 2\n    option redispatch\n" if redispatch else ""
    stats = (
        f"listen stats\n    bind 127.0.0.1:{stats_port}\n    stats enable\n    stats uri /stats\n\n"
        if stats_port
        else ""
    )
    return f"""
global
    maxconn 512

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
{retry}
frontend agents
    bind 127.0.0.1:{port}
    default_backend replicas

{stats}backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 2
{servers}
"""
