"""Bad values fail the render with a message that names the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.chart.conftest import CHART, run_helm

BAD_VALUES = [
    pytest.param(
        ["--set-string", "replicaCount=three"],
        "at '/replicaCount': got string, want integer",
        id="string-replicas",
    ),
    pytest.param(
        ["--set", "autoscaling.minReplica=2"],
        "at '/autoscaling': additional properties 'minReplica' not allowed",
        id="unknown-key",
    ),
    pytest.param(
        ["--set", "probes.liveness.path=/x"],
        "at '/probes/liveness': additional properties 'path' not allowed",
        id="unknown-nested-key",
    ),
    pytest.param(
        ["--set", "server.port=80"], "at '/server/port': minimum: got 80", id="privileged-port"
    ),
    pytest.param(
        ["--set", "model.name=gpt"],
        "at '/model/name': 'gpt' does not match",
        id="unknown-model-scheme",
    ),
    pytest.param(
        ["--set", "session.url=http://redis:6379"],
        "session.url must be a redis:// or rediss:// URL",
        id="non-redis-session-url",
    ),
    pytest.param(
        [
            "--set",
            "autoscaling.enabled=true,autoscaling.minReplicas=5,autoscaling.maxReplicas=3",
            "--set",
            "session.url=redis://r:6379",
        ],
        "autoscaling.minReplicas (5) must not exceed autoscaling.maxReplicas (3)",
        id="min-above-max",
    ),
    pytest.param(
        ["--set", "replicaCount=2"], "sessions would live in memory://", id="memory-sessions-shared"
    ),
    # The service's own limits and cross-field checks (see tests/chart/test_schemas.py).
    pytest.param(
        ["--set", "model.maxSteps=65"], "at '/model/maxSteps': maximum: got 65", id="max-steps"
    ),
    pytest.param(
        ["--set", "session.url=redis://cache:6379x/0"],
        "with a port from 1 to 65535 if any",
        id="port-typo",
    ),
    pytest.param(
        ["--set", "session.url=redis://cache:99999/0"],
        "with a port from 1 to 65535 if any",
        id="port-range",
    ),
    pytest.param(
        ["--set", "model.timeoutSeconds=60"],
        "model.timeoutSeconds (60) must not exceed server.requestTimeoutSeconds (30)",
        id="model-timeout-above-turn",
    ),
    pytest.param(
        ["--set", "model.name=openai:gpt-4o-mini"],
        "model.name is openai:gpt-4o-mini, which needs an API key: set model.apiKey, or "
        "existingSecret.name with existingSecret.modelApiKeyKey",
        id="openai-without-key",
    ),
    pytest.param(
        [
            "--set",
            "model.name=openai:gpt-4o-mini,existingSecret.name=creds,existingSecret.modelApiKeyKey=",
        ],
        "which needs an API key",
        id="openai-existing-secret-without-key",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES)
def test_bad_values_fail_the_render_with_a_clear_message(
    helm: Path, args: list[str], message: str
) -> None:
    result = run_helm(helm, "template", "agent", str(CHART), *args, check=False)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


def test_schema_closes_every_object_of_its_own() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node: dict, where: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            if node.get("additionalProperties") is not False:
                open_objects.append(where)
            for name, child in node["properties"].items():
                walk(child, f"{where}.{name}")

    walk(schema, "values")
    assert not open_objects


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "model.name=openai:gpt-4o-mini,model.apiKey=sk-x"],
        ["--set", "model.timeoutSeconds=30,server.requestTimeoutSeconds=30"],
        ["--set", "session.url=redis://:p%2Fw@cache.example:65535/0"],
    ],
    ids=["openai-with-key", "equal-timeouts", "encoded-password-top-port"],
)
def test_values_the_service_accepts_render(helm: Path, args: list[str]) -> None:
    result = run_helm(helm, "template", "agent", str(CHART), *args, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "redis://:chart-Pw-9e1@cache:6379x/0",
        "redis://u:pa/chart-Pw-9e1@cache:6379/0",
        "http://:chart-Pw-9e1@cache:6379/0",
    ],
    ids=["port-typo", "unencoded-slash", "wrong-scheme"],
)
def test_a_bad_session_url_is_refused_without_printing_its_password(helm: Path, url: str) -> None:
    result = run_helm(
        helm, "template", "agent", str(CHART), "--set-string", f"session.url={url}", check=False
    )
    assert result.returncode != 0
    assert "session.url must be a redis:// or rediss:// URL" in result.stderr, result.stderr
    assert "chart-Pw-9e1" not in result.stdout + result.stderr
