"""The figures of a bench run: medians, ratios, targets (met / NOT MET), tables, chart, page."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from load import SESSIONS, Run
from processes import HERE
from scenarios import CHAT_CONNECTIONS, SLOW_CONNECTIONS, SLOW_LATENCY_MS, Measured, Profile

# Targets of issue 14; printed as met / NOT MET, never asserted by tests.
TARGET_CHAT_THROUGHPUT = 0.8  # service req/s over floor req/s, at least
TARGET_CHAT_P99 = 1.0  # service p99 over floor p99, at most
TARGET_CHAT_VS_FASTAPI = 1.0  # service req/s over the plain FastAPI app's, at least
TARGET_SLOW = 0.9  # achieved over ideal (connections / latency), at least
TARGET_STREAM = 0.9  # streamed turns achieved over ideal, at least
TARGET_STREAM_KIB = 20.0  # memory per in-flight stream, at most
# "Keep today's figures" (0.54 s, 62 MiB, docs/benchmarks.md of 2026-11-26) with 10 % for noise.
TARGET_COLD_START_S = 0.6  # median, at most
TARGET_IDLE_RSS_MIB = 68.0  # per worker, at most


def median_run(runs: list[Run], scenario: str, subject: str) -> dict[str, Any]:
    """Medians over rounds of one subject's figures."""
    mine = [r for r in runs if r.scenario == scenario and r.subject == subject]
    return {
        "scenario": scenario,
        "subject": subject,
        "connections": mine[0].connections,
        "rps": statistics.median(r.rps for r in mine),
        "latency_ms": {
            k: statistics.median(r.latency_ms[k] for r in mine) for k in mine[0].latency_ms
        },
        "errors": sum(r.error_count for r in mine),
        "requests": sum(r.requests for r in mine),
        "rss_peak_mib": max((max(r.rss_peak_mib, default=0.0) for r in mine), default=0.0),
        "rss_idle_mib": min((min(r.rss_idle_mib, default=0.0) for r in mine), default=0.0),
        "cpu_us": statistics.median(r.cpu_us for r in mine),
    }


def paired_ratio(
    runs: list[Run], scenario: str, a: str, b: str, metric: Callable[[Run], float]
) -> float:
    """Median over rounds of metric(a)/metric(b): each round's pair ran back to back."""
    ratios = []
    for rnd in sorted({r.round for r in runs if r.scenario == scenario}):
        ra = next(r for r in runs if (r.scenario, r.subject, r.round) == (scenario, a, rnd))
        rb = next(r for r in runs if (r.scenario, r.subject, r.round) == (scenario, b, rnd))
        ratios.append(metric(ra) / metric(rb) if metric(rb) else float("inf"))
    return statistics.median(ratios)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, AttributeError):
        match = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        mem_gib = int(match.group(1)) / 1024 / 1024 if match else 0.0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "wrk_threads": int(os.environ.get("BENCH_WRK_THREADS", "1")),
    }


def _target(name: str, value: float, wanted: str, met: bool) -> dict[str, Any]:
    return {"name": name, "value": value, "target": wanted, "met": met}


def summarise(measured: Measured, profile: Profile) -> dict[str, Any]:
    """Every figure of the run: per-subject medians, ratios and the targets' verdicts."""
    runs = measured.runs
    subjects = list(dict.fromkeys((r.scenario, r.subject) for r in runs))
    table = [median_run(runs, s, sub) for s, sub in subjects]
    row = {(t["scenario"], t["subject"]): t for t in table}
    rps: Callable[[Run], float] = lambda r: r.rps  # noqa: E731
    p99: Callable[[Run], float] = lambda r: r.latency_ms["p99"]  # noqa: E731
    cpu: Callable[[Run], float] = lambda r: r.cpu_us  # noqa: E731
    ideal = SLOW_CONNECTIONS / (SLOW_LATENCY_MS / 1000)
    chat = row[("chat", "service")]
    stream = row[("stream", "service")]
    in_flight_kib = (
        (stream["rss_peak_mib"] - stream["rss_idle_mib"]) * 1024 / profile.stream_connections
    )
    ratios = {
        "healthz_throughput": paired_ratio(runs, "healthz", "service", "floor", rps),
        "chat_throughput": paired_ratio(runs, "chat", "service", "floor", rps),
        "chat_p99": paired_ratio(runs, "chat", "service", "floor", p99),
        "chat_cpu": paired_ratio(runs, "chat", "service", "floor", cpu),
        "chat_vs_fastapi": paired_ratio(runs, "chat", "service", "fastapi", rps),
        "chat_cpu_vs_fastapi": paired_ratio(runs, "chat", "service", "fastapi", cpu),
        "healthz_cpu": paired_ratio(runs, "healthz", "service", "floor", cpu),
        "slow_vs_ideal": row[("slow", "service")]["rps"] / ideal,
        "slow_floor_vs_ideal": row[("slow", "floor")]["rps"] / ideal,
        "stream_vs_ideal": stream["rps"] / profile.stream_ideal_rps,
        # Little's law for the closed loop: each connection's turns follow each other, so the
        # sustained rate is connections / mean latency, and its ideal connections / model
        # latency. The window's own count is quantised to whole waves of 2,000 turns.
        "stream_sustained_vs_ideal": profile.stream_latency_ms / stream["latency_ms"]["mean"]
        if stream["latency_ms"].get("mean")
        else 0.0,
        "stream_kib_per_turn": in_flight_kib,
        "workers_2_vs_1": row[("workers", "w2")]["rps"] / chat["rps"] if chat["rps"] else 0.0,
        # What a feature costs: on / off, each round's pair back to back. Printed, not targeted.
        "clients_throughput": paired_ratio(runs, "clients", "on", "off", rps),
        "clients_p99": paired_ratio(runs, "clients", "on", "off", p99),
        "clients_cpu": paired_ratio(runs, "clients", "on", "off", cpu),
        "otel_throughput": paired_ratio(runs, "otel", "on", "off", rps),
        "otel_p99": paired_ratio(runs, "otel", "on", "off", p99),
        "otel_cpu": paired_ratio(runs, "otel", "on", "off", cpu),
        "candidates": {
            name: {
                "throughput_vs_floor": paired_ratio(runs, "chat", name, "floor", rps),
                "cpu_vs_floor": paired_ratio(runs, "chat", name, "floor", cpu),
                "service_vs_candidate": paired_ratio(runs, "chat", "service", name, rps),
            }
            for name in measured.candidates
        },
    }
    cold = measured.cold
    cold_median = statistics.median(cold["service"])
    idle = measured.idle_rss
    idle_worker = max(idle["w1"] + idle["w2"])
    targets = [
        _target(
            "chat throughput vs floor",
            ratios["chat_throughput"],
            f">= {TARGET_CHAT_THROUGHPUT}x",
            ratios["chat_throughput"] >= TARGET_CHAT_THROUGHPUT,
        ),
        _target(
            "chat p99 vs floor",
            ratios["chat_p99"],
            f"<= {TARGET_CHAT_P99}x",
            ratios["chat_p99"] <= TARGET_CHAT_P99,
        ),
        _target(
            "chat throughput vs plain FastAPI",
            ratios["chat_vs_fastapi"],
            f">= {TARGET_CHAT_VS_FASTAPI}x",
            ratios["chat_vs_fastapi"] >= TARGET_CHAT_VS_FASTAPI,
        ),
        _target(
            "slow model vs ideal",
            ratios["slow_vs_ideal"],
            f">= {TARGET_SLOW}x",
            ratios["slow_vs_ideal"] >= TARGET_SLOW,
        ),
        _target(
            "streamed turns, sustained vs ideal",
            ratios["stream_sustained_vs_ideal"],
            f">= {TARGET_STREAM}x",
            ratios["stream_sustained_vs_ideal"] >= TARGET_STREAM,
        ),
        _target(
            "memory per in-flight stream (KiB)",
            in_flight_kib,
            f"<= {TARGET_STREAM_KIB:.0f} KiB",
            in_flight_kib <= TARGET_STREAM_KIB,
        ),
        _target("streamed turns with errors", stream["errors"], "0", stream["errors"] == 0),
        _target(
            "cold start median (s)",
            cold_median,
            f"<= {TARGET_COLD_START_S} s",
            cold_median <= TARGET_COLD_START_S,
        ),
        _target(
            "idle RSS per worker (MiB)",
            idle_worker,
            f"<= {TARGET_IDLE_RSS_MIB:.0f} MiB",
            idle_worker <= TARGET_IDLE_RSS_MIB,
        ),
    ]
    return {
        "date": measured.started.isoformat(timespec="seconds"),
        "quick": profile.quick,
        "profile": profile.__dict__,
        "machine": {**machine(), "load_average_before": measured.load_before},
        "settings": {
            "sessions": SESSIONS,
            "chat_connections": CHAT_CONNECTIONS,
            "slow_connections": SLOW_CONNECTIONS,
            "slow_latency_ms": SLOW_LATENCY_MS,
            "ideal_slow_rps": ideal,
            "stream_connections": profile.stream_connections,
            "stream_latency_ms": profile.stream_latency_ms,
            "stream_duration_s": profile.stream_duration_s,
            "ideal_stream_rps": profile.stream_ideal_rps,
        },
        "candidates": measured.candidates,
        "table": table,
        "ratios": ratios,
        "cold_start_s": {
            **cold,
            "service_median": cold_median,
            "service_cpu_median": statistics.median(cold["service_cpu"]),
            "imports_median": statistics.median(cold["imports"]),
            "imports_cpu_median": statistics.median(cold["imports_cpu"]),
        },
        "rss_mib": {
            "idle_w1": idle["w1"],
            "idle_w2": idle["w2"],
            "supervisor_w2": idle["supervisor"],
            "chat_peak_w1": chat["rss_peak_mib"],
            "chat_peak_w2": row[("workers", "w2")]["rss_peak_mib"],
            "stream_idle": stream["rss_idle_mib"],
            "stream_peak": stream["rss_peak_mib"],
        },
        "targets": targets,
        "runs": [r.__dict__ for r in runs],
    }


def label(scenario: str, subject: str, summary: dict[str, Any]) -> str:
    """The row's name in tables and the chart."""
    s = summary["settings"]
    fixed = {
        ("healthz", "service"): "1 /healthz, service",
        ("healthz", "floor"): "1 /healthz, floor",
        ("chat", "service"): "2 chat, service (1 worker)",
        ("chat", "floor"): "2 chat, floor",
        ("chat", "fastapi"): "2 chat, plain FastAPI app",
        ("slow", "service"): f"3 chat, model {s['slow_latency_ms']} ms, service",
        ("slow", "floor"): f"3 chat, model {s['slow_latency_ms']} ms, floor",
        ("workers", "w2"): "6 chat, service (2 workers)",
        ("clients", "on"): "8 chat, API key + usage + budgets + prices on",
        ("clients", "off"): "8 chat, client features off",
        ("otel", "on"): "9 chat, traces exported by OTLP",
        ("otel", "off"): "9 chat, OTEL_* unset",
        (
            "stream",
            "service",
        ): f"7 streamed chat, model {s['stream_latency_ms'] / 1000:g} s, service",
    }
    if (scenario, subject) in fixed:
        return fixed[(scenario, subject)]
    return f"2 chat, candidate `{subject}` ({summary['candidates'].get(subject, '?')})"


def markdown(summary: dict[str, Any]) -> str:
    """The result tables in Markdown (the terminal prints the same)."""
    lines = [
        "| scenario | conns | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | CPU us/req | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in summary["table"]:
        lat = row["latency_ms"]
        lines.append(
            f"| {label(row['scenario'], row['subject'], summary)} | {row['connections']} "
            f"| {row['rps']:.0f} | {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} "
            f"| {lat['p999']:.1f} | {row['cpu_us']:.0f} | {row['errors']} |"
        )
    r = summary["ratios"]
    cold = summary["cold_start_s"]
    rss = summary["rss_mib"]
    s = summary["settings"]
    lines += [
        "",
        "| figure | value |",
        "|---|--:|",
        f"| 1 /healthz throughput, service / floor | {r['healthz_throughput']:.2f}x |",
        f"| 2 chat throughput, service / floor | {r['chat_throughput']:.2f}x |",
        f"| 2 chat p99, service / floor | {r['chat_p99']:.2f}x |",
        f"| 2 chat throughput, service / plain FastAPI app | {r['chat_vs_fastapi']:.2f}x |",
        f"| 1 /healthz CPU per request, service / floor | {r['healthz_cpu']:.2f}x |",
        f"| 2 chat CPU per turn, service / floor | {r['chat_cpu']:.2f}x |",
        f"| 2 chat CPU per turn, service / plain FastAPI app | {r['chat_cpu_vs_fastapi']:.2f}x |",
    ]
    for name, c in r["candidates"].items():
        lines.append(
            f"| 2 candidate `{name}`: throughput / floor; CPU per turn / floor; "
            f"service / candidate | {c['throughput_vs_floor']:.2f}x; {c['cpu_vs_floor']:.2f}x; "
            f"{c['service_vs_candidate']:.2f}x |"
        )
    lines += [
        f"| 3 slow model, service / ideal ({s['ideal_slow_rps']:.0f} req/s) "
        f"| {r['slow_vs_ideal']:.2f}x |",
        f"| 3 slow model, floor / ideal | {r['slow_floor_vs_ideal']:.2f}x |",
        f"| 4 cold start to /readyz 200, median of {len(cold['service'])} (CPU time) | "
        f"{cold['service_median']:.2f} s ({cold['service_cpu_median']:.2f} s) |",
        f"| 4 bare `python -c 'import …'` of the service's imports, median (CPU time) | "
        f"{cold['imports_median']:.2f} s ({cold['imports_cpu_median']:.2f} s) |",
        f"| 5 RSS per worker, idle (1 worker; 2 workers) | {_mib(rss['idle_w1'])}; "
        f"{_mib(rss['idle_w2'])} |",
        f"| 5 RSS of the supervisor with 2 workers, idle | {_mib(rss['supervisor_w2'])} |",
        f"| 5 RSS per worker, peak under scenario 2 (1 worker; 2 workers) | "
        f"{rss['chat_peak_w1']:.0f}; {rss['chat_peak_w2']:.0f} MiB |",
        f"| 6 chat throughput, 2 workers / 1 worker | {r['workers_2_vs_1']:.2f}x |",
        f"| 7 streamed turns, {s['stream_connections']} at once for {s['stream_duration_s']} s, "
        f"service / ideal ({s['ideal_stream_rps']:.0f} req/s) | {r['stream_vs_ideal']:.2f}x |",
        f"| 7 streamed turns sustained (connections / mean latency), service / ideal "
        f"({s['stream_connections'] / (s['stream_latency_ms'] / 1000):.0f} req/s) | "
        f"{r.get('stream_sustained_vs_ideal', 0.0):.2f}x |",
        f"| 7 RSS of the worker, idle → peak with the streams in flight | "
        f"{rss['stream_idle']:.0f} → {rss['stream_peak']:.0f} MiB "
        f"({r['stream_kib_per_turn']:.1f} KiB per stream) |",
        f"| 8 API key + usage + budgets on / off: throughput; p99; CPU per turn | "
        f"{r['clients_throughput']:.2f}x; {r['clients_p99']:.2f}x; {r['clients_cpu']:.2f}x |",
        f"| 9 OTLP trace export on / OTEL_* unset: throughput; p99; CPU per turn | "
        f"{r['otel_throughput']:.2f}x; {r['otel_p99']:.2f}x; {r['otel_cpu']:.2f}x |",
        "",
        "| target | measured | wanted | verdict |",
        "|---|--:|--:|---|",
    ]
    for t in summary["targets"]:
        lines.append(f"| {t['name']} | {t['value']:.2f} | {t['target']} | {verdict(t['met'])} |")
    return "\n".join(lines) + "\n"


def _mib(values: list[float]) -> str:
    return " / ".join(f"{v:.0f}" for v in values) + " MiB"


def chart(summary: dict[str, Any], path: Path) -> None:
    """Throughput and latency percentiles per scenario and subject, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["table"]
    labels = [label(r["scenario"], r["subject"], summary) for r in rows]
    colours = ["#1f77b4" if r["subject"] in ("service", "w2", "on") else "#999999" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6), layout="constrained")
    ys = list(range(len(rows)))
    left.barh(ys, [r["rps"] for r in rows], color=colours)
    left.set_yticks(ys, labels)
    left.invert_yaxis()
    left.set_xscale("log")  # /healthz runs at 10x the chat rates
    left.set_xlabel("requests per second (median of rounds, log scale)")
    left.set_title("Throughput (blue: service, grey: baselines and candidates)")
    width = 0.2
    for i, (key, shade) in enumerate(
        [("p50", "#9ecae1"), ("p90", "#4292c6"), ("p99", "#08519c"), ("p999", "#08306b")]
    ):
        right.barh(
            [y + (i - 1.5) * width for y in ys],
            [r["latency_ms"][key] for r in rows],
            height=width,
            color=shade,
            label=key,
        )
    right.set_yticks(ys, labels)
    right.invert_yaxis()
    right.set_xscale("log")
    right.set_xlabel("latency, ms (log scale)")
    right.set_title("Latency percentiles")
    right.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"make bench, {summary['date']}, {summary['machine']['cores']} cores")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def docs_page(summary: dict[str, Any]) -> str:
    """docs/benchmarks.md: how to run, the latest figures, and the optimisation history."""
    m = summary["machine"]
    p = summary["profile"]
    s = summary["settings"]
    history = (HERE / "HISTORY.md").read_text() if (HERE / "HISTORY.md").exists() else ""
    # `make bench-autoscale` owns its own section of the page (hack/autoscale/bench.py): kept.
    page = HERE.parents[1] / "docs" / "benchmarks.md"
    text = page.read_text() if page.exists() else ""
    kept = re.search(r"\n<!-- autoscale -->.*<!-- /autoscale -->\n", text, re.S)
    history += kept.group(0) if kept else ""
    return f"""# Benchmarks

<!-- Generated by `make bench` (hack/bench/bench.py); edit hack/bench/HISTORY.md instead and
     re-render with `uv run --frozen python hack/bench/bench.py --render-only`. -->

`make bench` runs the service against two baselines side by side, in one bounded run. The
*floor* (`hack/bench/floor.py --framework asgi`) is the smallest ASGI app doing the same Redis
work per chat turn (LRANGE of the history, then the service's own append script, same client
library and options), under the same uvicorn settings, with no validation, metrics or logs. The
*plain FastAPI app* (`--framework fastapi`) does the same work the way FastAPI's tutorial would
(a pydantic body, a `response_model`, the client as a dependency). What the service costs above
them is the price of the shell. Each scenario's subjects run back to back, in alternating
order, {p["rounds"]} rounds of {p["warmup_s"]} s warm-up + {p["duration_s"]} s of wrk; figures
are medians over rounds, ratios are medians of each round's ratio. "CPU us/req" is the user +
system CPU time of the serving process(es) per answered request: unlike req/s it hardly moves
when other work takes the cores, so its ratio is the steadiest measure of the shell's cost.
Scenario 7 holds {s["stream_connections"]:,} streamed turns in flight on one worker (model
latency {s["stream_latency_ms"] / 1000:g} s) for {s["stream_duration_s"]} s: an ideal server
completes every connection's turn each {s["stream_latency_ms"] / 1000:g} s. Its target is
judged on the sustained rate, connections / mean latency (Little's law): the count of answers
in the window moves in whole waves of turns (all connections start together and stay in step),
so one late wave costs a third of it. The memory per
stream is the worker's peak RSS above its idle RSS, divided by the streams. Scenarios 8 and 9
price two features against the same service without them, on / off in alternating order:
API keys + token usage + budgets (session and client-day, reserved and settled in Redis) + a
price table, and trace export by OTLP to a real OpenTelemetry Collector. The service runs
as in production: JSON request logs at `info` (to a file), Prometheus metrics, one worker
unless stated. `BENCH_CANDIDATES=name=git-ref,…` adds other versions of the service (their
`service/src` at that commit) to the chat scenario, side by side.

## Latest run

- Date: {summary["date"]}
- Machine: {m["cpu"]}, {m["cores"]} cores, {m["memory_gib"]} GiB, Linux {m["kernel"]},
  Python {m["python"]}; load average before the run {m["load_average_before"]}
  (other work shares these cores, which is why only the ratios are compared)
- Load: wrk with {m["wrk_threads"]} thread(s) on the same cores, chat bodies over a pool of
  {s["sessions"]:,} sessions; Redis is a local `redis-server`

{markdown(summary)}
{history}"""
