"""Prometheus metrics of one app, in a registry of its own so tests can build many apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Request, model, agent and store metrics."""

    def __init__(self) -> None:
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

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
