"""Traces received by a real OTLP receiver: the OpenTelemetry Collector (hack/tools/otelcol, built
by `make otelcol`), whose file exporter writes every span it received as OTLP JSON lines."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, require
from tests.integration.conftest import Service, service_env, wait_until
from tests.integration.fake_openai import FakeOpenAI, Step, completion, tool_call
from tests.integration.test_readme import _blocks, _make_run, _ready, _section, _stop

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
WHISPER = "the-words-of-a-private-message"  # must not leave the service unless enabled


def _collector_binary() -> Path:
    out = subprocess.run(
        [str(ROOT / "hack/tools/build.sh"), "--dir", "otelcol"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(out) / "otelcol"


@dataclass
class Collector:
    """An otelcol process: OTLP over HTTP on `port`, spans appended to `spans_file`."""

    port: int
    spans_file: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[dict[str, Any]]:
        """Every span received so far, with its resource's attributes under `resource`."""
        if not self.spans_file.exists():
            return []
        found = []
        for line in self.spans_file.read_text().splitlines():
            for resource_spans in json.loads(line)["resourceSpans"]:
                resource = _attributes(resource_spans["resource"])
                for scope_spans in resource_spans["scopeSpans"]:
                    for span in scope_spans["spans"]:
                        found.append({**span, "resource": resource, "attrs": _attributes(span)})
        return found


def _attributes(item: dict[str, Any]) -> dict[str, Any]:
    def value(v: dict[str, Any]) -> Any:
        if "arrayValue" in v:
            return [value(x) for x in v["arrayValue"].get("values", [])]
        if "intValue" in v:
            return int(v["intValue"])
        return next(iter(v.values()))

    return {a["key"]: value(a["value"]) for a in item.get("attributes", [])}


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    binary = _collector_binary()
    require(binary.exists(), f"the OpenTelemetry Collector at {binary} (`make otelcol`)")
    port = free_port()
    spans_file = tmp_path / "spans.jsonl"
    config = tmp_path / "otelcol.yaml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{port}"}}}},
                "exporters": {"file": {"path": str(spans_file), "flush_interval": "100ms"}},
                "service": {
                    "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
                    "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
                },
            }
        )
    )
    log = tmp_path / "otelcol.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: proc.poll() is None and _listening(port), 30, "otelcol to listen")
        yield Collector(port, spans_file, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _traced_service(start_service, collector: Collector, fake: FakeOpenAI, **env: str) -> Service:
    service = start_service(
        AGENT_MODEL="openai:fake-model",
        AGENT_MODEL_BASE_URL=fake.base_url,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_SERVICE_NAME="moorage-test",
        OTEL_BSP_SCHEDULE_DELAY="100",  # ms: the batch leaves soon after the turn
        **env,
    )
    service.wait_ready()
    return service


def _tool_turn(fake: FakeOpenAI) -> None:
    fake.script = [
        Step(200, completion(tool_calls=[tool_call("calculator", '{"expression": "6*7"}')])),
        Step(200, completion("It is 42.", usage=(50, 5))),
    ]


def _trace(collector: Collector, trace_id: str, count: int, service: Service) -> list[dict]:
    wait_until(
        lambda: len([s for s in collector.spans() if s["traceId"] == trace_id]) >= count,
        30,
        f"{count} spans of trace {trace_id} at the collector",
        service,
    )
    return [s for s in collector.spans() if s["traceId"] == trace_id]


def test_a_turn_with_a_tool_call_is_one_trace_under_the_callers_span(
    start_service, collector: Collector, fake_api: FakeOpenAI
) -> None:
    _tool_turn(fake_api)
    service = _traced_service(start_service, collector, fake_api)
    answer = httpx.post(
        service.url + "/v1/chat",
        json={"session_id": "traced", "message": f"what is 6*7? {WHISPER}"},
        headers={"traceparent": TRACEPARENT},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    spans = _trace(collector, TRACE_ID, 5, service)
    by_name = {s["name"]: s for s in spans}
    assert sorted(by_name) == [
        "POST /v1/chat",
        "chat openai:fake-model",
        "execute_tool calculator",
        "invoke_agent moorage",
    ]
    assert len(spans) == 5  # two model calls share a name

    # FastAPI's HTTP server span continues the caller's trace; the turn is inside it.
    server = by_name["POST /v1/chat"]
    assert server["parentSpanId"] == CALLER_SPAN_ID
    assert server["kind"] == 2  # SERVER
    assert server["attrs"]["http.route"] == "/v1/chat"
    assert server["attrs"]["http.response.status_code"] == 200
    turn = by_name["invoke_agent moorage"]
    assert turn["parentSpanId"] == server["spanId"]
    assert turn["kind"] == 1  # INTERNAL
    assert turn["resource"]["service.name"] == "moorage-test"
    assert turn["attrs"]["gen_ai.operation.name"] == "invoke_agent"
    assert turn["attrs"]["gen_ai.conversation.id"] == "traced"
    assert turn["attrs"]["gen_ai.request.model"] == "openai:fake-model"
    assert turn["attrs"]["gen_ai.usage.input_tokens"] == 11 + 50
    assert turn["attrs"]["gen_ai.usage.output_tokens"] == 7 + 5

    calls = sorted(
        (s for s in spans if s["name"].startswith("chat ")),
        key=lambda s: int(s["startTimeUnixNano"]),
    )
    tool = by_name["execute_tool calculator"]
    for child in (*calls, tool):
        assert child["parentSpanId"] == turn["spanId"]
    assert [c["attrs"]["gen_ai.response.finish_reasons"] for c in calls] == [
        ["tool_calls"],
        ["stop"],
    ]
    assert [
        (c["attrs"]["gen_ai.usage.input_tokens"], c["attrs"]["gen_ai.usage.output_tokens"])
        for c in calls
    ] == [(11, 7), (50, 5)]
    for call in calls:
        assert call["kind"] == 3  # CLIENT
        assert call["attrs"]["gen_ai.operation.name"] == "chat"
        assert call["attrs"]["gen_ai.provider.name"] == "openai"
        assert call["attrs"]["gen_ai.request.model"] == "openai:fake-model"
        assert call["attrs"]["gen_ai.response.model"] == "fake-model"
    # The tool ran between the two model calls.
    assert int(calls[0]["endTimeUnixNano"]) <= int(tool["startTimeUnixNano"])
    assert int(tool["endTimeUnixNano"]) <= int(calls[1]["startTimeUnixNano"])
    assert tool["attrs"]["gen_ai.tool.name"] == "calculator"
    assert tool["attrs"]["gen_ai.tool.call.id"] == "call_1"
    # No message content unless explicitly enabled: not the user's, not the tool's, not the reply.
    everything = collector.spans_file.read_text()
    assert WHISPER not in everything
    assert "It is 42." not in everything
    assert "gen_ai.input.messages" not in everything
    assert "gen_ai.tool.call.arguments" not in everything


def test_a_streamed_turn_is_traced_and_a_new_trace_starts_without_traceparent(
    start_service, collector: Collector, fake_api: FakeOpenAI
) -> None:
    _tool_turn(fake_api)
    service = _traced_service(start_service, collector, fake_api)
    with httpx.stream(
        "POST", service.url + "/v1/chat/stream", json={"message": "what is 6*7?"}, timeout=30
    ) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
    assert "event: reply" in lines
    wait_until(lambda: len(collector.spans()) >= 5, 30, "the streamed turn's spans", service)
    spans = collector.spans()
    assert len(spans) == 5  # no span for the probes the test waited on
    assert len({s["traceId"] for s in spans}) == 1
    (server,) = [s for s in spans if s["name"] == "POST /v1/chat/stream"]
    assert not server.get("parentSpanId")  # a root: nobody sent a traceparent
    assert server["attrs"]["http.route"] == "/v1/chat/stream"
    (turn,) = [s for s in spans if s["name"] == "invoke_agent moorage"]
    assert turn["parentSpanId"] == server["spanId"]
    assert {s["parentSpanId"] for s in spans if s not in (server, turn)} == {turn["spanId"]}
    assert turn["attrs"]["gen_ai.usage.output_tokens"] == 7 + 5


def test_a_stream_whose_client_left_ends_its_turn_span_as_client_gone(
    start_service, collector: Collector, fake_api: FakeOpenAI
) -> None:
    words = " ".join(f"w{i}" for i in range(50))
    fake_api.script = [Step(200, completion(words), chunk_delay_s=0.1)]
    service = _traced_service(start_service, collector, fake_api)
    with httpx.stream(
        "POST",
        service.url + "/v1/chat/stream",
        json={"message": "talk"},
        headers={"traceparent": TRACEPARENT},
        timeout=30,
    ) as response:
        for line in response.iter_lines():
            if line == "event: delta":
                break  # leaving the block closes the connection

    def turn_span() -> dict[str, Any] | None:
        found = [s for s in collector.spans() if s["name"] == "invoke_agent moorage"]
        return found[0] if found else None

    wait_until(lambda: turn_span() is not None, 30, "the abandoned turn's span", service)
    turn = turn_span()
    assert turn is not None
    assert turn["traceId"] == TRACE_ID
    assert turn["attrs"]["error.type"] == "client-gone"
    (call,) = [s for s in collector.spans() if s["name"].startswith("chat ")]
    assert call["parentSpanId"] == turn["spanId"]
    assert call["attrs"]["error.type"] == "cancelled"
    # The span's context was never left set across a `yield` that another task resumed.
    assert "Failed to detach context" not in service.output()


def test_a_refused_turn_is_a_span_with_its_error_type(
    start_service, collector: Collector, fake_api: FakeOpenAI, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alpha:a-key-of-sixteen-chars-or-more\n")
    fake_api.script = [Step(200, completion("fine"))]
    service = _traced_service(
        start_service,
        collector,
        fake_api,
        AGENT_API_KEYS_FILE=str(keys),
        AGENT_BUDGET_SESSION_TOKENS="10",
        AGENT_BUDGET_TURN_TOKENS="10",
    )
    headers = {"Authorization": "Bearer a-key-of-sixteen-chars-or-more", "traceparent": TRACEPARENT}
    first = httpx.post(
        service.url + "/v1/chat", json={"session_id": "s", "message": "hi"}, headers=headers
    )
    assert first.status_code == 200, first.text  # 11 + 7 tokens: the session's 10 are spent
    second = httpx.post(
        service.url + "/v1/chat", json={"session_id": "s", "message": "hi"}, headers=headers
    )
    assert second.status_code == 429
    turns = [
        s for s in _trace(collector, TRACE_ID, 5, service) if s["name"] == "invoke_agent moorage"
    ]
    assert len(turns) == 2
    refused = [t for t in turns if t["attrs"].get("error.type") == "budget-exceeded"]
    assert len(refused) == 1
    assert refused[0]["status"]["code"] == 2  # ERROR


def test_message_content_is_exported_only_when_enabled(
    start_service, collector: Collector, fake_api: FakeOpenAI
) -> None:
    _tool_turn(fake_api)
    service = _traced_service(
        start_service,
        collector,
        fake_api,
        OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true",
    )
    answer = httpx.post(
        service.url + "/v1/chat",
        json={"message": f"what is 6*7? {WHISPER}"},
        headers={"traceparent": TRACEPARENT},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    spans = _trace(collector, TRACE_ID, 5, service)
    (tool,) = [s for s in spans if s["name"] == "execute_tool calculator"]
    assert json.loads(tool["attrs"]["gen_ai.tool.call.arguments"]) == {"expression": "6*7"}
    assert tool["attrs"]["gen_ai.tool.call.result"] == "42"
    first_call = min(
        (s for s in spans if s["name"].startswith("chat ")), key=lambda s: s["startTimeUnixNano"]
    )
    assert WHISPER in first_call["attrs"]["gen_ai.input.messages"]


def test_without_otel_variables_no_tracer_provider_and_no_exporter_is_loaded() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    probe = (
        "import sys\n"
        "from opentelemetry import trace\n"
        "from agent_service.tracing import start_tracing, start_turn\n"
        "assert start_tracing() is None\n"
        "span = start_turn({'traceparent': '00-" + TRACEPARENT[3:] + "'}, 'echo')\n"
        "assert not span.is_recording()\n"
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', "
        "'opentelemetry.exporter', 'google.protobuf'))]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_readme_tracing_command_exports_a_turns_spans(
    tmp_path: Path, collector: Collector
) -> None:
    (command,) = [b for b in _blocks(_section("clients")) if "OTEL_" in b]
    words = shlex.split(command)
    assignments = [w for w in words if "=" in w and w.startswith("OTEL_")]
    assert words[len(assignments) :] == ["make", "run"]
    overrides = dict(a.split("=", 1) for a in assignments)
    overrides["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.endpoint  # ours, not the example's
    port = free_port()
    env = service_env(AGENT_PORT=str(port), AGENT_DRAIN_DELAY_S="0", **overrides)
    env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    proc = _make_run(env, tmp_path / "make-run-otel.log")
    try:
        wait_until(lambda: _ready(port), 120, "`make run` with OTEL_* to be ready")
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat",
            json={"message": "calc 6*7"},
            headers={"traceparent": TRACEPARENT},
        )
        assert answer.status_code == 200, answer.text
        wait_until(
            lambda: any(s["name"] == "execute_tool calculator" for s in collector.spans()),
            30,
            "the turn's spans at the collector",
        )
    finally:
        _stop(proc)
    spans = [s for s in collector.spans() if s["traceId"] == TRACE_ID]
    assert {s["resource"]["service.name"] for s in spans} == {overrides["OTEL_SERVICE_NAME"]}
    assert {s["name"] for s in spans} == {
        "POST /v1/chat",
        "invoke_agent moorage",
        "chat echo",
        "execute_tool calculator",
    }
