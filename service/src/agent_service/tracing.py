"""OpenTelemetry traces of agent turns, following the GenAI semantic conventions.

Off unless an OTLP endpoint is configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`
or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
turn it off again). Off, no tracer provider is installed and every span is the API's no-op span.
On, FastAPI's HTTP server span of a request continues the caller's `traceparent`; a turn is an
`invoke_agent` span inside it, with a child span per model call (`chat <model>`) and per tool call
(`execute_tool <name>`).
Message content is recorded only when `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi.telemetry import TelemetryConfig
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)
T = TypeVar("T")

TRACER_NAME = "agent_service"
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
AGENT_NAME = "moorage"

# GenAI semantic conventions (attribute names as the conventions spell them).
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"  # the older name of gen_ai.provider.name, still read by many backends
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
FINISH_REASONS = "gen_ai.response.finish_reasons"
CONVERSATION_ID = "gen_ai.conversation.id"
AGENT = "gen_ai.agent.name"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_RESULT = "gen_ai.tool.call.result"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
ERROR_TYPE = "error.type"


def _true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def exporting() -> bool:
    """Whether the standard variables ask for traces to be exported."""
    if _true("OTEL_SDK_DISABLED"):
        return False
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporters in {"", "none"}:
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def capture_content() -> bool:
    """Whether spans may carry message content (off unless explicitly enabled)."""
    return _true(CAPTURE_CONTENT_ENV)


# The service's tracer: a no-op one (no span objects, no context changes) until `start_tracing`
# installs a provider. Looked up once: the API's lookup reads the environment on every call.
_tracer: trace.Tracer = trace.NoOpTracer()


def start_tracing() -> TracerProvider | None:
    """Install an OTLP-exporting tracer provider when configured; None (and no cost) otherwise.

    The exporter reads every `OTEL_EXPORTER_OTLP_*` variable itself (endpoint, headers,
    timeout, certificates); the resource reads `OTEL_SERVICE_NAME` and
    `OTEL_RESOURCE_ATTRIBUTES`. Spans leave in batches, off the request path.
    """
    if not exporting():
        return None
    # Imported only when used: the exporter pulls in protobuf and its generated modules.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "agent")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    global _tracer
    _tracer = provider.get_tracer(TRACER_NAME)
    log.info(
        "exporting traces by OTLP",
        extra={"capture_message_content": capture_content()},
    )
    return provider


def stop_tracing(provider: TracerProvider | None) -> None:
    """Send what is still buffered, then stop exporting."""
    if provider is not None:
        global _tracer
        _tracer = trace.NoOpTracer()
        provider.shutdown()


def tracer() -> trace.Tracer:
    """The service's tracer (a no-op one unless `start_tracing` installed a provider)."""
    return _tracer


def parent_context(headers: Mapping[str, str]) -> Context | None:
    """The caller's trace context from `traceparent`/`tracestate`, if it sent one."""
    if "traceparent" not in headers:
        return None
    return propagate.extract(headers)


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in UNTRACED_PATHS


UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes
# FastAPI's native tracing (on when a tracer provider is installed): its HTTP server span of each
# request, which continues the caller's `traceparent` and is the parent of the turn's span; not
# its span per dependency and endpoint, nor any for probes and scrapes.
FASTAPI_TELEMETRY: TelemetryConfig = {"operation_spans": False, "exclude": _untraced}


def fastapi_telemetry() -> TelemetryConfig:
    """FastAPI's telemetry settings: off unless traces are exported.

    Left on, FastAPI asks the OpenTelemetry API on every request whether a tracer or meter
    provider is installed, and that lookup reads the environment each time.
    """
    if exporting():
        return FASTAPI_TELEMETRY
    return {"tracing": False, "metrics": False, "logs": False}


def start_turn(headers: Mapping[str, str], model: str) -> Span:
    """The span of one turn (`invoke_agent`).

    Inside the request's HTTP server span when there is one (INTERNAL); otherwise the service's
    root span (SERVER), continuing the caller's `traceparent` if it sent one. Not yet current:
    `turn` or `within` make it the parent of the turn's model and tool spans where the turn runs
    (a streamed turn runs in the response's task, not the handler's).
    """
    if isinstance(_tracer, trace.NoOpTracer):
        return trace.INVALID_SPAN
    inside = trace.get_current_span().get_span_context().is_valid
    return _tracer.start_span(
        f"invoke_agent {AGENT_NAME}",
        context=None if inside else parent_context(headers),
        kind=SpanKind.INTERNAL if inside else SpanKind.SERVER,
        attributes={OPERATION: "invoke_agent", AGENT: AGENT_NAME, REQUEST_MODEL: model},
    )


def within(span: Span, parts: AsyncGenerator[T, None]) -> AsyncIterator[T]:
    """`parts`, each step run with `span` current (the parent of the spans started there).

    The context is set and reset around each step, never across a `yield`: a stream whose
    client left is closed by whichever task finalises it, where a reset would fail. Closing
    this closes `parts`. Without tracing, `parts` itself.
    """
    return _within(span, parts) if span.is_recording() else parts


async def _within(span: Span, parts: AsyncGenerator[T, None]) -> AsyncIterator[T]:
    current = trace.set_span_in_context(span)
    try:
        while True:
            token = otel_context.attach(current)
            try:
                part = await anext(parts)
            except StopAsyncIteration:
                return
            finally:
                otel_context.detach(token)
            yield part
    finally:
        await parts.aclose()


def end_turn(
    span: Span, session_id: str | None, outcome: str, usage: Mapping[str, Any] | None
) -> None:
    """Record how the turn ended on its span: session, tokens, and an error type unless ok."""
    if not span.is_recording():
        return
    if session_id:
        span.set_attribute(CONVERSATION_ID, session_id)
    if usage:
        span.set_attribute(INPUT_TOKENS, int(usage.get("input_tokens", 0)))
        span.set_attribute(OUTPUT_TOKENS, int(usage.get("output_tokens", 0)))
    if outcome not in {"ok", "replayed"}:
        span.set_attribute(ERROR_TYPE, outcome)
        span.set_status(StatusCode.ERROR)


@contextlib.contextmanager
def turn(headers: Mapping[str, str], model: str) -> Iterator[Span]:
    """A whole turn's span, current for the block and ended with it."""
    span = start_turn(headers, model)
    if not span.is_recording():
        yield span
        return
    with trace.use_span(
        span, end_on_exit=True, record_exception=False, set_status_on_exception=False
    ):
        yield span
