"""OpenTelemetry traces of agent turns, following the GenAI semantic conventions.

Off unless an OTLP endpoint is configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`
or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
turn it off again). Off, no tracer provider is installed and every span is the API's no-op span.
On, a turn is a SERVER span (`invoke_agent`) whose parent comes from the request's `traceparent`,
with a child span per model call (`chat <model>`) and per tool call (`execute_tool <name>`).
Message content is recorded only when `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.context import Context

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

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
    log.info(
        "exporting traces by OTLP",
        extra={"capture_message_content": capture_content()},
    )
    return provider


def stop_tracing(provider: TracerProvider | None) -> None:
    """Send what is still buffered, then stop exporting."""
    if provider is not None:
        provider.shutdown()


def tracer() -> trace.Tracer:
    """The service's tracer (a no-op one unless `start_tracing` installed a provider)."""
    return trace.get_tracer(TRACER_NAME)


def parent_context(headers: Mapping[str, str]) -> Context | None:
    """The caller's trace context from `traceparent`/`tracestate`, if it sent one."""
    if "traceparent" not in headers:
        return None
    return propagate.extract(headers)
