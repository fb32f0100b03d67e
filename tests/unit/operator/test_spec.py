"""The spec parser and the validation rules the operator mirrors from the CRD."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agent_operator.spec import (
    AUTOSCALING_METRICS,
    IMAGE_PATTERN,
    SERVICE_BOUNDS,
    SESSION_URL_CREDENTIALS_PATTERN,
    SESSION_URL_PATTERN,
    AgentSpec,
    _bounded_values,
    parse_spec,
    validate,
)

CRD = Path(__file__).resolve().parents[3] / "manifests" / "crds" / "agentdeployments.yaml"


def _crd_spec_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_parse_spec_fills_every_default_like_the_crd():
    spec = parse_spec({"image": "moorage/agent:1.0"})
    assert spec.replicas == 1
    assert not spec.autoscaling.enabled
    assert (spec.autoscaling.min_replicas, spec.autoscaling.max_replicas) == (2, 10)
    assert spec.model.name == "echo"
    assert spec.session.url is None
    assert spec.rollout.max_surge == 1
    assert spec.rollout.max_unavailable == 0
    assert spec.termination.drain_delay_seconds == 5
    assert spec.termination.shutdown_timeout_seconds == 30
    assert spec.resources["limits"] == {"memory": "256Mi"}


def test_python_defaults_equal_the_crd_schema_defaults():
    props = _crd_spec_schema()["properties"]
    auto = props["autoscaling"]["properties"]
    spec = parse_spec({"image": "a"})
    auto_spec = spec.autoscaling
    assert auto["minReplicas"]["default"] == spec.autoscaling.min_replicas
    assert auto["maxReplicas"]["default"] == spec.autoscaling.max_replicas
    assert (
        auto["targetCPUUtilizationPercentage"]["default"]
        == spec.autoscaling.target_cpu_utilization_percentage
    )
    assert props["replicas"]["default"] == spec.replicas
    assert props["rollout"]["properties"]["maxSurge"]["default"] == spec.rollout.max_surge
    assert props["resources"]["default"] == spec.resources
    python = {
        "metric": auto_spec.metric,
        "targetTurnsInFlightPerPod": auto_spec.target_turns_in_flight_per_pod,
        "scaleUpStabilizationSeconds": auto_spec.scale_up_stabilization_seconds,
        "scaleUpPods": auto_spec.scale_up_pods,
        "scaleUpPercent": auto_spec.scale_up_percent,
        "scaleUpPeriodSeconds": auto_spec.scale_up_period_seconds,
        "scaleDownStabilizationSeconds": auto_spec.scale_down_stabilization_seconds,
        "scaleDownPods": auto_spec.scale_down_pods,
        "scaleDownPeriodSeconds": auto_spec.scale_down_period_seconds,
    }
    assert {key: auto[key]["default"] for key in python} == python
    assert auto["metric"]["enum"] == list(AUTOSCALING_METRICS)
    term = props["termination"]["properties"]
    assert term["drainDelaySeconds"]["default"] == spec.termination.drain_delay_seconds
    assert term["shutdownTimeoutSeconds"]["default"] == spec.termination.shutdown_timeout_seconds


def test_the_crd_image_rule_uses_the_same_pattern_as_the_operator():
    rule = _crd_spec_schema()["properties"]["image"]["x-kubernetes-validations"][0]["rule"]
    cel_literal = re.fullmatch(r"self\.matches\('(.*)'\)", rule)
    assert cel_literal is not None
    # CEL single-quoted strings unescape backslashes like Python's.
    assert cel_literal.group(1).replace("\\\\", "\\") == IMAGE_PATTERN


@pytest.mark.parametrize(
    "image",
    [
        "agent",
        "moorage/agent:1.2.0",
        "localhost:5000/moorage/agent:dev",
        "registry.example.com/team/agent-service@sha256:" + "a" * 64,
        "registry.example.com/team/agent_service:v1.2.3-rc.1@sha256:" + "0" * 64,
    ],
)
def test_valid_image_references_are_accepted(image):
    assert validate(parse_spec({"image": image})) == []


@pytest.mark.parametrize(
    "image",
    ["", "Moorage/Agent", "agent:", "agent:tag with space", "-agent", "agent@sha256:abc", "a//b"],
)
def test_invalid_image_references_are_rejected(image):
    problems = validate(parse_spec({"image": image}))
    assert problems
    assert "image" in problems[0]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"replicas": -1}, "replicas must be 0 or more"),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
            "minReplicas must be less than or equal to maxReplicas",
        ),
        ({"model": {"name": "gpt-4"}}, "model.name"),
        ({"modelApiKeySecretRef": {"name": "k"}}, "must name a Secret and a key"),
        (
            {"session": {"url": "redis://r", "urlSecretRef": {"name": "s", "key": "u"}}},
            "not both",
        ),
        ({"session": {"url": "http://r"}}, "session.url"),
        ({"session": {"url": "redis://cache:6379x/0"}}, "a port from 1 to 65535"),
        ({"session": {"url": "redis://cache:99999/0"}}, "a port from 1 to 65535"),
        ({"session": {"url": "redis://u:pa/ss@cache/0"}}, "percent-encode"),
        ({"session": {"url": "redis://u:pw@cache/0"}}, "set session.urlSecretRef"),
        ({"rollout": {"maxSurge": 0, "maxUnavailable": "0%"}}, "cannot both be 0"),
        ({"disruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}}, "not both"),
        ({"env": [{"name": "AGENT_PORT", "value": "1"}]}, "may not set AGENT_PORT"),
        ({"model": {"maxSteps": 65}}, "spec.model.maxSteps must be between 1 and 64"),
        ({"session": {"ttlSeconds": 59}}, "spec.session.ttlSeconds must be between 60"),
        (
            {"model": {"timeoutSeconds": 31, "requestTimeoutSeconds": 30}},
            "timeoutSeconds must be less than or equal to model.requestTimeoutSeconds",
        ),
        (
            {"model": {"name": "openai:gpt-4o-mini"}},
            "modelApiKeySecretRef is required when spec.model.name is openai:<model>",
        ),
        ({"autoscaling": {"metric": "memory"}}, "spec.autoscaling.metric must be 'cpu' or"),
        (
            {"model": {"requestTimeoutSeconds": 60}, "termination": {"shutdownTimeoutSeconds": 59}},
            "shutdownTimeoutSeconds must be at least model.requestTimeoutSeconds",
        ),
    ],
)
def test_each_rule_reports_a_clear_problem(raw, fragment):
    problems = validate(parse_spec({"image": "agent:1", **raw}))
    assert any(fragment in p for p in problems), problems


def test_a_non_integer_replica_count_is_an_invalid_spec():
    from agent_operator.spec import InvalidSpecError

    with pytest.raises(InvalidSpecError, match="replicas must be an integer"):
        parse_spec({"image": "a", "replicas": "3"})


def test_secret_refs_lists_only_the_references_given():
    spec = parse_spec({"image": "a", "session": {"urlSecretRef": {"name": "store", "key": "url"}}})
    assert [(r.name, r.key) for r in spec.secret_refs()] == [("store", "url")]
    assert AgentSpec(image="a").secret_refs() == []


def test_the_service_bounds_are_the_crds_and_cover_every_bounded_field():
    props = _crd_spec_schema()["properties"]
    for path, (low, high) in SERVICE_BOUNDS.items():
        node = props
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]["properties"]
        assert (node[leaf]["minimum"], node[leaf]["maximum"]) == (low, high), path
    assert set(SERVICE_BOUNDS) == set(_bounded_values(AgentSpec(image="a")))
    assert SERVICE_BOUNDS["model.maxSteps"] == (1, 64)


def test_an_openai_model_with_a_key_and_equal_timeouts_is_valid():
    spec = parse_spec(
        {
            "image": "agent:1",
            "model": {"name": "openai:m", "timeoutSeconds": 30, "requestTimeoutSeconds": 30},
            "modelApiKeySecretRef": {"name": "llm", "key": "api-key"},
        }
    )
    assert validate(spec) == []


def test_the_crd_session_url_rules_use_the_same_patterns_as_the_operator():
    session = _crd_spec_schema()["properties"]["session"]
    patterns = []
    for item in session["x-kubernetes-validations"]:
        literal = re.fullmatch(
            r"!has\(self\.url\) \|\| !?self\.url\.matches\('(.*)'\)", item["rule"]
        )
        if literal:
            # CEL single-quoted strings unescape backslashes like Python's.
            patterns.append(literal.group(1).replace("\\\\", "\\"))
    assert patterns == [SESSION_URL_PATTERN, SESSION_URL_CREDENTIALS_PATTERN]
    # On the object, so that the API server's error never echoes the URL's value.
    assert "x-kubernetes-validations" not in session["properties"]["url"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pw@cache:6379/0",
        "redis://default@cache/0",
        "rediss://cache/0?password=pw",
        "redis://cache/0?ssl_cert_reqs=none&Auth_Token=x",
    ],
)
def test_a_session_url_with_credentials_must_come_from_a_secret(url):
    problems = validate(parse_spec({"image": "agent:1", "session": {"url": url}}))
    assert any("session.urlSecretRef" in p for p in problems), problems


@pytest.mark.parametrize(
    "url", ["memory://", "redis://cache:6379/0", "rediss://cache/0?ssl_cert_reqs=none"]
)
def test_a_session_url_without_credentials_is_valid(url):
    assert validate(parse_spec({"image": "agent:1", "session": {"url": url}})) == []
