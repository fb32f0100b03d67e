"""Prometheus metrics of one app, in a registry of its own so tests can build many apps.

With several worker processes, `PROMETHEUS_MULTIPROC_DIR` is set (see `server.serve`) and every
worker's /metrics reports the sum over all workers, whichever worker answers the scrape.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.types import ASGIApp, Receive, Scope, Send

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The gauge an `inflight` HPA scales on (charts/agent autoscaling.metric, the operator's
# spec.autoscaling.metric): the prometheus-adapter rule serves it per pod under this name.
TURNS_IN_FLIGHT = "agent_turns_in_flight"
# Requests that are chat turns: whole, or streamed (in flight until the stream's last byte).
TURN_ROUTES = frozenset({("POST", "/v1/chat"), ("POST", "/v1/chat/stream")})

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Request, model, agent and store metrics."""

    def __init__(self) -> None:
        self._multiproc_dir = os.environ.get(MULTIPROC_DIR_ENV)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "agent_http_requests",
            "HTTP requests served, by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "agent_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "agent_http_requests_in_flight",
            "HTTP requests being served now.",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.turns_in_flight = Gauge(
            TURNS_IN_FLIGHT,
            "Chat turns being served now, streams included, summed over workers (what an "
            "inflight HPA scales on).",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "agent_model_call_duration_seconds",
            "Time of one model call, by provider and outcome.",
            ["provider", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.turn_steps = Histogram(
            "agent_turn_steps",
            "Model calls (steps) per agent turn.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=self.registry,
        )
        self.store_errors = Counter(
            "agent_store_errors",
            "Session store operations that failed, by operation.",
            ["operation"],
            registry=self.registry,
        )
        self.store_up = Gauge(
            "agent_store_up",
            "1 while the session store answers, 0 while it does not (min over workers).",
            multiprocess_mode="livemin",
            registry=self.registry,
        )
        self.turns = Counter(
            "agent_turns",
            "Chat turns by mode (whole, stream) and outcome (ok, replayed, or an error reason).",
            ["mode", "outcome"],
            registry=self.registry,
        )

        self.tokens = Counter(
            "agent_tokens",
            "Model tokens used by turns, by client, model and direction (input, output).",
            ["client", "model", "direction"],
            registry=self.registry,
        )
        self.cost = Counter(
            "agent_cost_usd",
            "Cost of the tokens used, in US dollars (models in AGENT_MODEL_PRICES only).",
            ["client", "model"],
            registry=self.registry,
        )
        self.budget_refusals = Counter(
            "agent_budget_refusals",
            "Turns refused because a token budget was used up, by scope (session, client).",
            ["scope"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "agent_auth_failures",
            "Requests refused for a missing or unknown API key.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (of every worker)."""
        if self._multiproc_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._multiproc_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def close(self) -> None:
        """Drop this process's live gauges from the shared figures when it stops."""
        if self._multiproc_dir is not None:
            mark_process_dead(os.getpid(), self._multiproc_dir)  # type: ignore[no-untyped-call]


class CountTurnsInFlight:
    """Counts chat turns from their request's arrival to their response's last byte.

    Outermost in the app, so every path a turn takes is counted, and a stream is a turn in
    flight until it ends. The service has no concurrency cap, so no turn waits for a slot.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.gauge = metrics.turns_in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) not in TURN_ROUTES:
            await self.app(scope, receive, send)
            return
        self.gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.gauge.dec()
