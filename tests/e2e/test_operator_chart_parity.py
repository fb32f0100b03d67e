"""The operator's children and the Helm chart's objects agree for equivalent inputs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_operator.builders import Owner, build_children
from agent_operator.spec import parse_spec
from tests.e2e.conftest import Cluster

ROOT = Path(__file__).resolve().parents[2]
NAME = "parity-agent"  # contains the chart name, so the chart's fullname is the release name

VALUES: dict[str, Any] = {
    "replicaCount": 3,
    "image": {"repository": "registry.example.com/team/agent", "tag": "1.2.3"},
    "model": {
        "name": "openai:gpt-4o-mini",
        "baseUrl": "http://llm.example:8000/v1",
        "maxSteps": 4,
        "timeoutSeconds": 20,
    },
    "server": {"requestTimeoutSeconds": 40, "logLevel": "warning"},
    "session": {"ttlSeconds": 3600},
    "existingSecret": {
        "name": "agent-secrets",
        "sessionUrlKey": "redis-url",
        "modelApiKeyKey": "api-key",
    },
    "extraEnv": {"AGENT_ECHO_LATENCY_MS": "5"},
    "termination": {"drainDelaySeconds": 7, "shutdownTimeoutSeconds": 40},
    "strategy": {"maxSurge": 2, "maxUnavailable": 1},
    "resources": {"requests": {"cpu": "200m", "memory": "192Mi"}, "limits": {"memory": "384Mi"}},
    "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
    "service": {"port": 8081},
}
SPEC: dict[str, Any] = {
    "image": "registry.example.com/team/agent:1.2.3",
    "replicas": 3,
    "model": {
        "name": "openai:gpt-4o-mini",
        "baseUrl": "http://llm.example:8000/v1",
        "maxSteps": 4,
        "timeoutSeconds": 20,
        "requestTimeoutSeconds": 40,
    },
    "logLevel": "warning",
    "modelApiKeySecretRef": {"name": "agent-secrets", "key": "api-key"},
    "session": {"urlSecretRef": {"name": "agent-secrets", "key": "redis-url"}, "ttlSeconds": 3600},
    "env": [{"name": "AGENT_ECHO_LATENCY_MS", "value": "5"}],
    "termination": {"drainDelaySeconds": 7, "shutdownTimeoutSeconds": 40},
    "rollout": {"maxSurge": 2, "maxUnavailable": 1},
    "resources": {"requests": {"cpu": "200m", "memory": "192Mi"}, "limits": {"memory": "384Mi"}},
    "disruptionBudget": {"maxUnavailable": 1},
    "service": {"port": 8081},
}
AUTOSCALING_VALUES = {
    "enabled": True,
    "minReplicas": 2,
    "maxReplicas": 6,
    "targetCPUUtilizationPercentage": 65,
}
# Turns in flight per pod, with every behavior setting away from its default.
INFLIGHT_AUTOSCALING_VALUES = {
    "enabled": True,
    "metric": "inflight",
    "minReplicas": 1,
    "maxReplicas": 5,
    "targetTurnsInFlightPerPod": 7,
    "scaleUpStabilizationSeconds": 10,
    "scaleUpPods": 3,
    "scaleUpPercent": 50,
    "scaleUpPeriodSeconds": 20,
    "scaleDownStabilizationSeconds": 120,
    "scaleDownPods": 2,
    "scaleDownPeriodSeconds": 30,
}


def _render(cluster: Cluster, values: dict[str, Any], tmp_path: Path) -> dict[str, dict[str, Any]]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    command = [str(cluster.helm), "template", NAME, str(ROOT / "charts" / "agent")]
    out = subprocess.run(
        [*command, "-f", str(values_file)],
        env=cluster.env,
        text=True,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    return {
        d["kind"]: d for d in docs if "helm.sh/hook" not in d["metadata"].get("annotations", {})
    }


def _operator(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    owner = Owner(name=NAME, namespace="default", uid="0000")
    return {obj["kind"]: obj for _, _, obj in build_children(owner, parse_spec(spec)) if obj}


def _environment(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The container's effective environment: its ConfigMap's data plus its env entries."""
    container = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, Any] = dict(objs["ConfigMap"]["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def _pod(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pod = dict(objs["Deployment"]["spec"]["template"]["spec"])
    # The chart runs pods under its own ServiceAccount; the operator under the namespace's
    # default one (neither mounts a token). The operator also turns off service links, so a
    # Service named "agent" cannot inject AGENT_SERVICE_HOST & co. into the AGENT_* namespace.
    pod.pop("serviceAccountName", None)
    pod.pop("enableServiceLinks", None)
    container = dict(pod.pop("containers")[0])
    container.pop("envFrom")  # ConfigMap names differ; the content is compared via _environment
    container.pop("env", None)
    return {"pod": pod, "container": container}


@pytest.fixture
def chart(cluster: Cluster, tmp_path: Path) -> dict[str, dict[str, Any]]:
    return _render(cluster, VALUES, tmp_path)


def test_pod_templates_match_probes_security_grace_volumes_and_image(chart):
    assert _pod(_operator(SPEC)) == _pod(chart)


def test_the_agent_environment_contract_matches(chart):
    assert _environment(_operator(SPEC)) == _environment(chart)


def test_deployment_rollout_settings_and_selector_match(chart):
    ours = _operator(SPEC)["Deployment"]["spec"]
    theirs = chart["Deployment"]["spec"]
    for key in ("replicas", "revisionHistoryLimit", "strategy", "selector"):
        assert ours[key] == theirs[key], key


def test_service_and_disruption_budget_match(chart):
    ours = _operator(SPEC)
    assert ours["Service"]["spec"] == chart["Service"]["spec"]
    assert ours["PodDisruptionBudget"]["spec"] == chart["PodDisruptionBudget"]["spec"]


@pytest.mark.parametrize(
    "autoscaling", [AUTOSCALING_VALUES, INFLIGHT_AUTOSCALING_VALUES], ids=["cpu", "inflight"]
)
def test_autoscaling_matches_and_neither_sets_replicas(
    cluster: Cluster, tmp_path: Path, autoscaling: dict[str, Any]
):
    chart = _render(cluster, {**VALUES, "autoscaling": autoscaling}, tmp_path)
    ours = _operator({**SPEC, "autoscaling": autoscaling})
    assert ours["HorizontalPodAutoscaler"]["spec"] == chart["HorizontalPodAutoscaler"]["spec"]
    assert "replicas" not in ours["Deployment"]["spec"]
    assert "replicas" not in chart["Deployment"]["spec"]
