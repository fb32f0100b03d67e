"""Driving load with wrk: one measured run of one subject, with its CPU and peak memory."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

from processes import HERE, Proc, flush_redis, log
from procstat import RssSampler, cpu_seconds, rss_kib, worker_pids

SESSIONS = 10_000  # chat bodies are drawn from this many sessions


@dataclass
class Run:
    """One wrk run against one subject."""

    scenario: str
    subject: str
    round: int
    connections: int
    requests: int
    rps: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    rss_peak_mib: list[float] = field(default_factory=list)
    rss_idle_mib: list[float] = field(default_factory=list)
    # Process CPU (all workers) per answered request: the figure least moved by other load.
    cpu_us: float = 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def wrk(
    url: str, script: str, connections: int, seconds: int, args: list[str], timeout_s: int = 5
) -> dict[str, Any]:
    """Run wrk once and return its BENCH_RESULT line."""
    threads = int(os.environ.get("BENCH_WRK_THREADS", "1"))
    argv = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        f"{timeout_s}s",
        "-s",
        str(HERE / script),
        url,
        "--",
        *args,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            return result
    raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")


def load(
    scenario: str,
    subject: str,
    proc: Proc,
    path: str,
    connections: int,
    round_no: int,
    redis_port: int,
    *,
    warmup_s: int,
    duration_s: int,
    timeout_s: int = 5,
    api_key: str | None = None,
) -> Run:
    """Warm up (unless `warmup_s` is 0), then measure one subject under wrk.

    Chat paths POST bodies over a pool of sessions (chat.lua), with `Authorization: Bearer
    <api_key>` when given; anything else is a plain GET.
    """
    script, args = ("chat.lua", [str(SESSIONS)]) if path.startswith("/v1/chat") else ("get.lua", [])
    if api_key:
        args.append(api_key)
    url = proc.url + path
    flush_redis(redis_port)
    if warmup_s:
        wrk(url, script, connections, warmup_s, args, timeout_s)
    workers = worker_pids(proc.popen.pid)
    idle = [rss_kib([pid]) / 1024 for pid in workers]
    cpu_before = cpu_seconds(workers)
    with RssSampler(workers) as sampler:
        raw = wrk(url, script, connections, duration_s, args, timeout_s)
    cpu_used = cpu_seconds(workers) - cpu_before
    seconds = raw["duration_us"] / 1e6
    # wrk counts every response; throughput counts only answers (non-2xx are errors here).
    answered = raw["requests"] - raw["errors"]["status"]
    latency = {k: v / 1000 for k, v in raw["latency_us"].items()}
    run = Run(
        scenario=scenario,
        subject=subject,
        round=round_no,
        connections=connections,
        requests=raw["requests"],
        rps=answered / seconds if seconds else 0.0,
        latency_ms=latency,
        errors=raw["errors"],
        rss_peak_mib=[kib / 1024 for kib in sampler.peak.values()],
        rss_idle_mib=idle,
        cpu_us=cpu_used / answered * 1e6 if answered else 0.0,
    )
    log(
        f"  {scenario:<8} {subject:<10} {run.rps:8.0f} req/s  p99 {latency['p99']:8.1f} ms"
        f"  {run.cpu_us:6.0f} us CPU/req  errors {run.error_count}"
    )
    return run
