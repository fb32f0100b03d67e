"""The processes a bench run starts (redis-server, the service, the baselines, an OpenTelemetry
Collector), stopped by pid."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYTHON = sys.executable
SERVICE_SRC = ROOT / "service" / "src"
PYCACHE = Path(
    os.environ.get("BENCH_PYCACHE") or Path.home() / ".cache" / "moorage" / "bench-pycache"
)


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the table."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    """A process this run started; stopped by its pid, never by name."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # Its own process group (see Processes.start): this reaches worker processes too.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)


class Processes:
    """Everything started here, stopped in reverse order when the run ends (or is interrupted)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Proc] = []

    def start(self, name: str, argv: list[str], port: int, env: dict[str, str]) -> Proc:
        with (self.logs / f"{name}.log").open("wb") as out:
            popen = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = Proc(name, popen, port)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()

    def start_redis(self) -> Proc:
        """A throw-away redis-server on a free port, persistence off."""
        port = free_port()
        proc = self.start(
            "redis",
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.logs),
            ],
            port,
            base_env(),
        )  # fmt: skip
        wait_for(lambda: redis_answers(port), 15, "redis-server", proc)
        return proc

    def start_service(
        self,
        name: str,
        redis_url: str,
        src: Path = SERVICE_SRC,
        other_env: dict[str, str] | None = None,
        **settings: str,
    ) -> Proc:
        """The service (from `src`, e.g. a candidate's tree) with AGENT_* `settings` on top, and
        `other_env` (e.g. OTEL_*)."""
        port = free_port()
        env = service_env(port, redis_url)
        env.update({f"AGENT_{k.upper()}": v for k, v in settings.items()})
        env.update(other_env or {})
        if src != SERVICE_SRC:
            env["PYTHONPATH"] = str(src)
        return self.start(name, [PYTHON, "-m", "agent_service"], port, env)

    def start_collector(self) -> Proc:
        """The OpenTelemetry Collector of `make otelcol`: OTLP over HTTP in, spans dropped.

        The spans go to /dev/null by the file exporter: the collector still decodes every
        request, as a real one does, and the run's disk stays out of the figures.
        """
        port = free_port()
        config = self.logs / "otelcol.yaml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "receivers": {
                        "otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{port}"}}}
                    },
                    "exporters": {"file": {"path": os.devnull}},
                    "service": {
                        "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
                        "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
                    },
                }
            )
        )
        proc = self.start("otelcol", [str(otelcol_binary()), "--config", str(config)], port, {})
        wait_for(lambda: listening(port), 30, "otelcol to listen", proc)
        return proc

    def start_baseline(self, name: str, redis_url: str, framework: str, latency_ms: int) -> Proc:
        """A baseline app of hack/bench/floor.py doing the service's Redis work."""
        port = free_port()
        argv = [
            PYTHON, str(HERE / "floor.py"),
            "--port", str(port),
            "--redis-url", redis_url,
            "--latency-ms", str(latency_ms),
            "--framework", framework,
        ]  # fmt: skip
        return self.start(name, argv, port, base_env())


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc: Proc | None) -> None:
    """Poll until `check` holds; fail naming `what` (and the process's log) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} ({what})")
        if check():
            return
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


def otelcol_binary() -> Path:
    """Where `make otelcol` puts the collector (hack/tools/build.sh)."""
    out = subprocess.run(
        [str(ROOT / "hack" / "tools" / "build.sh"), "--dir", "otelcol"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(out) / "otelcol"


def listening(port: int) -> bool:
    """True once something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def answers(url: str, client: httpx.Client) -> bool:
    """True once GET `url` is a 200."""
    try:
        return client.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def redis_answers(port: int) -> bool:
    import redis

    try:
        with redis.Redis(port=port, socket_connect_timeout=0.2) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def flush_redis(port: int) -> None:
    """Start every run from an empty database, so all sides read histories of the same size."""
    import redis

    with redis.Redis(port=port) as client:
        client.flushall()


def base_env() -> dict[str, str]:
    """Our environment minus any AGENT_* the caller had set, with bytecode caching on.

    The image compiles bytecode at build time; a dev shell may set PYTHONDONTWRITEBYTECODE, and
    then every start would compile the whole dependency tree from source. Bytecode goes to a
    cache outside the virtualenv instead (BENCH_PYCACHE), so measured starts are like the image's.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENT_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def service_env(port: int, redis_url: str) -> dict[str, str]:
    """The service as a user would run it in production: JSON logs at info, Redis sessions."""
    env = base_env()
    env.update(
        AGENT_PORT=str(port),
        AGENT_SESSION_URL=redis_url,
        AGENT_WORKERS="1",
        AGENT_ECHO_LATENCY_MS="0",
        AGENT_LOG_LEVEL="info",
        AGENT_LOG_FORMAT="json",
        AGENT_DRAIN_DELAY_S="0",
        AGENT_SHUTDOWN_TIMEOUT_S="5",
    )
    return env


def candidate_tree(ref: str, into: Path) -> Path:
    """The service's source at git `ref`, unpacked under `into`: a candidate to run beside HEAD."""
    target = Path(tempfile.mkdtemp(prefix="candidate-", dir=into))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "service/src"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "service" / "src"
