"""What `make bench` measures and in which order: cold start, idle memory, then the load plan.

Every paired scenario runs next to its baselines in alternating order, round after round, so
the ratios hold on a noisy machine. The streaming scenario is measured once against its ideal.
"""

from __future__ import annotations

import ast
import datetime as dt
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from load import Run, load
from processes import (
    PYTHON,
    SERVICE_SRC,
    Proc,
    Processes,
    answers,
    base_env,
    candidate_tree,
    log,
    otelcol_binary,
    wait_for,
)
from procstat import cpu_seconds, rss_kib, worker_pids

CHAT_CONNECTIONS = 32
SLOW_CONNECTIONS = 256
SLOW_LATENCY_MS = 200
BENCH_CLIENT = "bench"
BENCH_CLIENT_KEY = "bench-client-key-not-a-secret"  # a throw-away key of a local run
# Scenario 8 "on": every client feature of a turn at work. Budgets far above what a run spends,
# so each turn claims its session and reserves and settles both budgets, and none is refused.
CLIENTS_ON = {
    "budget_client_daily_tokens": str(10**12),
    "budget_session_tokens": str(10**9),
    "model_prices": '{"echo": {"input": 1.0, "output": 2.0}}',
}


@dataclass(frozen=True)
class Profile:
    """How long and how often; the full profile stays under ten minutes on two cores."""

    quick: bool
    rounds: int
    warmup_s: int
    duration_s: int
    cold_starts: int
    stream_connections: int  # concurrent streamed turns on one worker
    stream_latency_ms: int  # the model's latency per streamed turn
    stream_waves: int  # how many turns each connection completes in the measured window

    @property
    def stream_duration_s(self) -> int:
        """Whole waves plus a second: the window in which an ideal server completes them."""
        return self.stream_waves * self.stream_latency_ms // 1000 + 1

    @property
    def stream_ideal_rps(self) -> float:
        return self.stream_connections * self.stream_waves / self.stream_duration_s


FULL = Profile(
    quick=False,
    rounds=3,
    warmup_s=2,
    duration_s=10,
    cold_starts=5,
    stream_connections=2000,
    stream_latency_ms=10_000,
    stream_waves=3,
)
QUICK = Profile(
    quick=True,
    rounds=1,
    warmup_s=1,
    duration_s=2,
    cold_starts=2,
    stream_connections=200,
    stream_latency_ms=1000,
    stream_waves=2,
)

# (scenario, path, connections, subjects); candidates join the chat scenario.
PLAN: list[tuple[str, str, int, list[str]]] = [
    ("healthz", "/healthz", CHAT_CONNECTIONS, ["service", "floor"]),
    ("chat", "/v1/chat", CHAT_CONNECTIONS, ["service", "floor", "fastapi"]),
    ("slow", "/v1/chat", SLOW_CONNECTIONS, ["service", "floor"]),
    ("workers", "/v1/chat", CHAT_CONNECTIONS, ["w2"]),
    # The same service with API keys, budgets and a price table on, against all of them off.
    ("clients", "/v1/chat", CHAT_CONNECTIONS, ["on", "off"]),
    # The same service exporting traces to a real OTLP receiver, against OTEL_* unset.
    ("otel", "/v1/chat", CHAT_CONNECTIONS, ["on", "off"]),
]


@dataclass
class Measured:
    """Everything one run measured, for the report."""

    runs: list[Run]
    cold: dict[str, Any]
    idle_rss: dict[str, list[float]]
    candidates: dict[str, str]
    started: dt.datetime
    load_before: list[float]


def candidates_from_env() -> dict[str, str]:
    """BENCH_CANDIDATES="name=git-ref,…": other versions of the service to run in the chat pair."""
    spec = os.environ.get("BENCH_CANDIDATES", "").strip()
    pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise SystemExit(f"bench: BENCH_CANDIDATES must be name=git-ref,… (got {spec!r})")
    return {name.strip(): ref.strip() for name, ref in pairs}


def measure(profile: Profile, logs: Path, candidates: dict[str, str]) -> Measured:
    """Start everything, measure every scenario, stop everything."""
    started = dt.datetime.now(dt.UTC)
    load_before = [round(x, 2) for x in os.getloadavg()]
    processes = Processes(logs)
    client = httpx.Client()
    try:
        redis = processes.start_redis()
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
        # Cold start first, while nothing else of ours runs.
        cold = cold_starts(profile, redis_url, processes, client)
        keys_file = logs / "api-keys"
        keys_file.write_text(f"{BENCH_CLIENT}:{BENCH_CLIENT_KEY}\n")
        collector = processes.start_collector()

        subjects: dict[tuple[str, str], Proc] = {
            ("chat", "service"): processes.start_service("service-chat", redis_url),
            ("chat", "floor"): processes.start_baseline("floor-chat", redis_url, "asgi", 0),
            ("chat", "fastapi"): processes.start_baseline("fastapi-chat", redis_url, "fastapi", 0),
            ("slow", "service"): processes.start_service(
                "service-slow", redis_url, echo_latency_ms=str(SLOW_LATENCY_MS)
            ),
            ("slow", "floor"): processes.start_baseline(
                "floor-slow", redis_url, "asgi", SLOW_LATENCY_MS
            ),
            ("workers", "w2"): processes.start_service("service-w2", redis_url, workers="2"),
            ("stream", "service"): processes.start_service(
                "service-stream", redis_url, echo_latency_ms=str(profile.stream_latency_ms)
            ),
            ("clients", "on"): processes.start_service(
                "service-clients", redis_url, api_keys_file=str(keys_file), **CLIENTS_ON
            ),
            ("otel", "on"): processes.start_service(
                "service-otel",
                redis_url,
                other_env={
                    "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                    "OTEL_SERVICE_NAME": "agent-bench",
                },
            ),
        }
        for name, ref in candidates.items():
            src = candidate_tree(ref, logs)
            subjects[("chat", name)] = processes.start_service(f"candidate-{name}", redis_url, src)
        plan = [
            (s, path, conns, order + (list(candidates) if s == "chat" else []))
            for s, path, conns, order in PLAN
        ]
        for proc in subjects.values():
            wait_for(lambda p=proc: answers(p.url + "/readyz", client), 60, "/readyz", proc)  # type: ignore[misc]
        # The healthz pair reuses the chat processes: same app, different route; so do the
        # "off" sides of scenarios 8 and 9.
        subjects[("healthz", "service")] = subjects[("chat", "service")]
        subjects[("healthz", "floor")] = subjects[("chat", "floor")]
        subjects[("clients", "off")] = subjects[("chat", "service")]
        subjects[("otel", "off")] = subjects[("chat", "service")]

        time.sleep(1)  # let start-up allocations settle before reading idle memory
        w2_pid = subjects[("workers", "w2")].popen.pid
        idle_rss = {
            "w1": [rss_kib([subjects[("chat", "service")].popen.pid]) / 1024],
            "w2": [rss_kib([pid]) / 1024 for pid in worker_pids(w2_pid)],
            "supervisor": [rss_kib([w2_pid]) / 1024],
        }
        log(f"idle RSS: 1 worker {idle_rss['w1']}, 2 workers {idle_rss['w2']} MiB")

        runs: list[Run] = []
        for rnd in range(1, profile.rounds + 1):
            log(f"round {rnd}/{profile.rounds}")
            for scenario, path, conns, order in plan:
                # Alternate who goes first, so a drift in background load hits all sides alike.
                for subject in order if rnd % 2 else list(reversed(order)):
                    proc = subjects[(scenario, subject)]
                    runs.append(
                        load(
                            scenario,
                            subject,
                            proc,
                            path,
                            conns,
                            rnd,
                            redis.port,
                            warmup_s=profile.warmup_s,
                            duration_s=profile.duration_s,
                            # Both sides of scenario 8 get the same requests; "off" ignores it.
                            api_key=BENCH_CLIENT_KEY if scenario == "clients" else None,
                        )
                    )
        log(
            f"streaming: {profile.stream_connections} turns at once, model "
            f"{profile.stream_latency_ms} ms, {profile.stream_duration_s} s"
        )
        runs.append(
            load(
                "stream",
                "service",
                subjects[("stream", "service")],
                "/v1/chat/stream",
                profile.stream_connections,
                1,
                redis.port,
                warmup_s=0,  # a warm-up would leave its streams in flight
                duration_s=profile.stream_duration_s,
                timeout_s=profile.stream_latency_ms // 1000 + 10,
            )
        )
    finally:
        client.close()
        processes.stop_all()
    return Measured(runs, cold, idle_rss, candidates, started, load_before)


def cold_starts(
    profile: Profile, redis_url: str, processes: Processes, client: httpx.Client
) -> dict[str, Any]:
    """Start the service (and a bare import of its imports) `cold_starts` times each."""
    modules = service_imports()
    cold: dict[str, Any] = {
        "service": [],
        "service_cpu": [],
        "imports": [],
        "imports_cpu": [],
        "modules": modules,
    }
    log(f"cold start: {profile.cold_starts} runs each, after one that fills the bytecode cache")
    cold_start_imports(modules)
    cold_start_service(redis_url, processes, client)
    for _ in range(profile.cold_starts):
        wall, cpu = cold_start_imports(modules)
        cold["imports"].append(wall)
        cold["imports_cpu"].append(cpu)
        wall, cpu = cold_start_service(redis_url, processes, client)
        cold["service"].append(wall)
        cold["service_cpu"].append(cpu)
    log(
        f"  service {statistics.median(cold['service']):.2f} s "
        f"(cpu {statistics.median(cold['service_cpu']):.2f} s), "
        f"imports {statistics.median(cold['imports']):.2f} s "
        f"(cpu {statistics.median(cold['imports_cpu']):.2f} s)"
    )
    return cold


def service_imports() -> list[str]:
    """Third-party modules the service imports, plus what uvicorn loads for its settings."""
    names: set[str] = set()
    for source in (SERVICE_SRC / "agent_service").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    third_party = {
        n
        for n in names
        if n.split(".")[0] not in sys.stdlib_module_names and not n.startswith("agent_service")
    }
    # serve() picks these by name (loop="uvloop", http="httptools", lifespan="on").
    third_party |= {"uvloop", "uvicorn.protocols.http.httptools_impl", "uvicorn.lifespan.on"}
    return sorted(third_party)


def cold_start_service(
    redis_url: str, processes: Processes, client: httpx.Client
) -> tuple[float, float]:
    """Wall and CPU seconds from process start to the first 200 from /readyz."""
    started = time.perf_counter()
    proc = processes.start_service("cold-start", redis_url)
    try:
        wait_for(lambda: answers(proc.url + "/readyz", client), 30, "/readyz 200", proc)
        wall = time.perf_counter() - started
        # CPU time is what start-up costs regardless of how many other processes share the cores.
        return wall, cpu_seconds([proc.popen.pid])
    finally:
        processes.stop(proc)


def cold_start_imports(modules: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds for a bare interpreter to import the service's imports and exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [PYTHON, "-c", f"import {', '.join(modules)}"], env=base_env(), check=True, timeout=60
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def prerequisites_missing() -> list[str]:
    missing = [tool for tool in ("wrk", "redis-server") if shutil.which(tool) is None]
    if not otelcol_binary().exists():
        missing.append("the OpenTelemetry Collector (make otelcol)")
    return missing
