"""The chart's HPA: on CPU or on turns in flight per pod, with behavior for long turns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agent_service.metrics import TURNS_IN_FLIGHT
from tests.chart.conftest import CHART, ROOT, Render, find, run_helm

REDIS = {"session": {"url": "redis://cache:6379/0"}}


def _hpa(render: Render, **autoscaling: object) -> dict:
    docs = render(autoscaling={"enabled": True, **autoscaling}, **REDIS)
    return dict(find(docs, "HorizontalPodAutoscaler")["spec"])


def test_cpu_is_the_default_metric(render: Render) -> None:
    metrics = _hpa(render)["metrics"]
    assert metrics == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]


def test_inflight_targets_the_services_gauge_as_an_average_per_pod(render: Render) -> None:
    metrics = _hpa(render, metric="inflight", targetTurnsInFlightPerPod=8)["metrics"]
    assert metrics == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": TURNS_IN_FLIGHT},
                "target": {"type": "AverageValue", "averageValue": "8"},
            },
        }
    ]


def test_memory_still_adds_to_either_metric(render: Render) -> None:
    metrics = _hpa(render, metric="inflight", targetMemoryUtilizationPercentage=80)["metrics"]
    assert [m["type"] for m in metrics] == ["Pods", "Resource"]
    assert metrics[1]["resource"]["name"] == "memory"


def test_behavior_scales_up_at_once_and_down_slowly_one_pod_at_a_time(render: Render) -> None:
    behavior = _hpa(render)["behavior"]
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 0
    assert up["selectPolicy"] == "Max"
    assert {p["type"]: p["value"] for p in up["policies"]} == {"Pods": 4, "Percent": 100}
    assert down["stabilizationWindowSeconds"] == 300
    assert down["selectPolicy"] == "Min"
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]


def test_an_unknown_metric_is_refused_by_the_schema(helm: Path) -> None:
    result = run_helm(
        helm, "template", "agent", str(CHART), "--set", "autoscaling.metric=queue", check=False
    )
    assert result.returncode != 0
    assert "autoscaling/metric" in result.stderr, result.stderr


def test_a_shutdown_timeout_shorter_than_a_turn_is_refused(helm: Path) -> None:
    result = run_helm(
        helm, "template", "agent", str(CHART),
        "--set", "server.requestTimeoutSeconds=60",
        "--set", "termination.shutdownTimeoutSeconds=59",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "termination.shutdownTimeoutSeconds (59) must be at least" in result.stderr


def test_the_adapter_rule_is_rendered_only_on_request_and_serves_the_gauge_per_pod(
    render: Render,
) -> None:
    assert not [d for d in render() if d["metadata"]["name"].endswith("prometheus-adapter")]
    docs = render(autoscaling={"prometheusAdapterRules": {"create": True}})
    config = yaml.safe_load(
        find(docs, "ConfigMap", "agent-prometheus-adapter")["data"]["config.yaml"]
    )
    (rule,) = config["rules"]
    assert rule["seriesQuery"].startswith(TURNS_IN_FLIGHT + "{")
    assert rule["name"]["as"] == TURNS_IN_FLIGHT
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    # The chart serves the very file the local cluster's adapter runs with (hack/cluster).
    assert config == yaml.safe_load((CHART / "files" / "prometheus-adapter.yaml").read_text())


@pytest.mark.parametrize(
    "key",
    [
        "targetTurnsInFlightPerPod",
        "scaleUpStabilizationSeconds",
        "scaleUpPods",
        "scaleUpPercent",
        "scaleUpPeriodSeconds",
        "scaleDownStabilizationSeconds",
        "scaleDownPods",
        "scaleDownPeriodSeconds",
    ],
)
def test_each_setting_has_the_same_default_and_bounds_in_the_chart_and_the_crd(key: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["autoscaling"]
    chart = json.loads((CHART / "values.schema.json").read_text())
    chart_prop = chart["properties"]["autoscaling"]["properties"][key]
    crd = yaml.safe_load((ROOT / "manifests" / "crds" / "agentdeployments.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    crd_prop = spec["properties"]["autoscaling"]["properties"][key]
    assert values[key] == crd_prop["default"]
    assert (chart_prop["minimum"], chart_prop["maximum"]) == (
        crd_prop["minimum"],
        crd_prop["maximum"],
    )


def test_the_metric_choices_match_the_crd() -> None:
    chart = json.loads((CHART / "values.schema.json").read_text())
    crd = yaml.safe_load((ROOT / "manifests" / "crds" / "agentdeployments.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    crd_metric = spec["properties"]["autoscaling"]["properties"]["metric"]
    assert chart["properties"]["autoscaling"]["properties"]["metric"]["enum"] == crd_metric["enum"]
