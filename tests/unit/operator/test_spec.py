"""The spec parser and the validation rules the operator mirrors from the CRD."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agent_operator.spec import (
    AUTOSCALING_METRICS,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    IMAGE_PATTERN,
    LABEL_VALUE_PATTERN,
    MOUNT_PATH_PATTERN,
    RESERVED_LABELS,
    RESERVED_PREFIX,
    SERVICE_BOUNDS,
    SESSION_URL_CREDENTIALS_PATTERN,
    SESSION_URL_PATTERN,
    TOLERATION_EFFECTS,
    TOLERATION_OPERATORS,
    WHEN_UNSATISFIABLE,
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


# spec.pod and spec.service: where the pods run and how they and the Service are identified.

POD = {
    "nodeSelector": {"pool": "agents"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "agents"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    "topologySpreadConstraints": [
        {
            "maxSkew": 2,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
        }
    ],
    "priorityClassName": "agents-high",
    "imagePullSecrets": [{"name": "registry"}],
    "serviceAccountName": "agent-identity",
    "annotations": {"team.example/owner": "ml"},
    "labels": {"team": "ml"},
    "volumes": [{"name": "prompts", "configMap": {"name": "prompts"}}],
    "volumeMounts": [{"name": "prompts", "mountPath": "/etc/prompts", "readOnly": True}],
}


def _pod_problems(**pod):
    return validate(parse_spec({"image": "agent:1", "pod": pod}))


def test_the_pod_and_service_fields_are_read_as_given():
    spec = parse_spec(
        {
            "image": "agent:1",
            "pod": POD,
            "service": {"port": 81, "annotations": {"a": "1"}, "labels": {"tier": "web"}},
        }
    )
    pod = spec.pod
    assert pod.node_selector == {"pool": "agents"}
    assert pod.tolerations == tuple(POD["tolerations"])
    assert pod.affinity == POD["affinity"]
    assert pod.topology_spread_constraints == tuple(POD["topologySpreadConstraints"])
    assert (pod.priority_class_name, pod.service_account_name) == ("agents-high", "agent-identity")
    assert pod.image_pull_secrets == ("registry",)
    assert (pod.annotations, pod.labels) == (POD["annotations"], POD["labels"])
    assert pod.volumes == tuple(POD["volumes"])
    assert pod.volume_mounts == tuple(POD["volumeMounts"])
    assert (spec.service.port, spec.service.annotations, spec.service.labels) == (
        81,
        {"a": "1"},
        {"tier": "web"},
    )
    assert validate(spec) == []


def test_an_absent_spread_is_the_default_and_an_empty_one_is_none():
    assert parse_spec({"image": "a"}).pod.topology_spread_constraints is None
    empty = parse_spec({"image": "a", "pod": {"topologySpreadConstraints": []}})
    assert empty.pod.topology_spread_constraints == ()


def test_nulls_inside_pass_through_fields_are_dropped():
    # The API server would drop them from the Deployment, which would then look drifted.
    spec = parse_spec(
        {"image": "a", "pod": {"affinity": {"nodeAffinity": None, "podAffinity": {}}}}
    )
    assert spec.pod.affinity == {"podAffinity": {}}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"pod": {"labels": "team=ml"}}, "spec.pod.labels must be an object"),
        ({"pod": {"annotations": {"a": 1}}}, "spec.pod.annotations['a'] must be a string"),
        ({"pod": {"volumes": {"name": "x"}}}, "spec.pod.volumes must be a list of objects"),
    ],
)
def test_a_pod_field_of_the_wrong_shape_is_an_invalid_spec(raw, fragment):
    from agent_operator.spec import InvalidSpecError

    with pytest.raises(InvalidSpecError, match=re.escape(fragment)):
        parse_spec({"image": "a", **raw})


@pytest.mark.parametrize("key", RESERVED_LABELS)
@pytest.mark.parametrize("where", ["pod", "service"])
def test_labels_may_not_take_the_operators_keys(key, where):
    problems = validate(parse_spec({"image": "a", where: {"labels": {key: "x"}}}))
    assert problems == [
        f"spec.{where}.labels may not set {key}: the operator sets it (app.kubernetes.io/name, "
        "app.kubernetes.io/instance select the pods; moorage.dev/* keys are the operator's own)"
    ]


@pytest.mark.parametrize("where", ["pod", "service"])
@pytest.mark.parametrize("kind", ["labels", "annotations"])
def test_the_moorage_dev_prefix_is_the_operators_own(where, kind):
    problems = validate(parse_spec({"image": "a", where: {kind: {"moorage.dev/gate": "x"}}}))
    assert len(problems) == 1
    assert problems[0].startswith(f"spec.{where}.{kind} may not set moorage.dev/gate")


def test_user_labels_beside_the_operators_are_fine():
    labels = {"app.kubernetes.io/component": "agent", "team": "ml", "example.com/tier": ""}
    assert _pod_problems(labels=labels, annotations={"prometheus.io/scrape": "true"}) == []


@pytest.mark.parametrize(
    ("pod", "fragment"),
    [
        ({"labels": {"team": "-ml"}}, "spec.pod.labels['team'] must be a label value"),
        ({"labels": {"bad key": "x"}}, "key 'bad key' is not a valid Kubernetes key"),
        ({"nodeSelector": {"pool": "a b"}}, "spec.pod.nodeSelector['pool'] is not a valid"),
        ({"serviceAccountName": "Agent"}, "spec.pod.serviceAccountName must be a DNS subdomain"),
        ({"priorityClassName": "high_"}, "spec.pod.priorityClassName must be a DNS subdomain"),
        ({"imagePullSecrets": [{"name": ""}]}, "spec.pod.imagePullSecrets[0].name must be a DNS"),
        ({"tolerations": [{"key": "k", "operator": "Lt"}]}, "operator must be Exists or Equal"),
        ({"tolerations": [{"key": "k", "effect": "NoRun"}]}, "effect must be NoSchedule,"),
        ({"tolerations": [{"operator": "Exists", "key": "k", "value": "v"}]}, "takes no value"),
        ({"tolerations": [{"value": "v"}]}, "without a key needs operator Exists"),
        (
            {"tolerations": [{"key": "k", "tolerationSeconds": 5}]},
            "tolerationSeconds applies only to effect NoExecute",
        ),
        (
            {"topologySpreadConstraints": [{"topologyKey": "z", "whenUnsatisfiable": "Never"}]},
            "maxSkew must be an integer of 1 or more",
        ),
        (
            {"topologySpreadConstraints": [{"maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}]},
            "topologyKey is required",
        ),
        (
            {
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "z", "whenUnsatisfiable": "ScheduleAnyway"},
                    {"maxSkew": 2, "topologyKey": "z", "whenUnsatisfiable": "ScheduleAnyway"},
                ]
            },
            "repeats topologyKey z",
        ),
        (
            {
                "topologySpreadConstraints": [
                    {
                        "maxSkew": 1,
                        "topologyKey": "z",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "minDomains": 2,
                    }
                ]
            },
            "minDomains applies only to whenUnsatisfiable DoNotSchedule",
        ),
    ],
)
def test_each_pod_rule_reports_a_clear_problem(pod, fragment):
    problems = _pod_problems(**pod)
    assert any(fragment in p for p in problems), problems


@pytest.mark.parametrize("name", ["tmp", "secrets", "session-tls", "system-prompt"])
def test_a_volume_may_not_take_a_name_of_the_pod_contract(name):
    problems = _pod_problems(volumes=[{"name": name, "emptyDir": {}}])
    assert problems == [
        f"spec.pod.volumes[0].name may not be {name}: the pod contract's own volumes are "
        "tmp, secrets, session-tls, system-prompt"
    ]


@pytest.mark.parametrize(
    ("path", "reserved"),
    [
        ("/tmp", "/tmp"),
        ("/tmp/cache", "/tmp"),
        ("/etc/moorage/secrets", "/etc/moorage/secrets"),
        ("/etc/moorage", "/etc/moorage/secrets"),  # above: it would hide the contract's mount
        ("/etc", "/etc/moorage/secrets"),
        ("/etc/moorage/session-tls/extra", "/etc/moorage/session-tls"),
        ("/etc/moorage/agent", "/etc/moorage/agent"),
    ],
)
def test_a_mount_may_not_be_at_above_or_under_a_mount_of_the_contract(path, reserved):
    problems = _pod_problems(
        volumes=[{"name": "extra", "emptyDir": {}}],
        volumeMounts=[{"name": "extra", "mountPath": path}],
    )
    assert len(problems) == 1
    assert problems[0].startswith(
        f"spec.pod.volumeMounts[0].mountPath {path} collides with the pod contract's mount "
        f"{reserved} "
    )


@pytest.mark.parametrize("path", ["/etc/moorage/prompts", "/tmpfiles", "/var/cache/agent"])
def test_a_mount_beside_the_contracts_mounts_is_fine(path):
    volumes = [{"name": "extra", "emptyDir": {}}]
    assert _pod_problems(volumes=volumes, volumeMounts=[{"name": "extra", "mountPath": path}]) == []


@pytest.mark.parametrize(
    ("pod", "fragment"),
    [
        (
            {"volumeMounts": [{"name": "nope", "mountPath": "/x"}]},
            "must be one of spec.pod.volumes",
        ),
        (
            {"volumeMounts": [{"name": "tmp", "mountPath": "/x"}]},
            "spec.pod.volumeMounts[0].name must be one of spec.pod.volumes, got 'tmp'",
        ),
        ({"volumes": [{"name": "Extra"}]}, "spec.pod.volumes[0].name must be a DNS label"),
        ({"volumes": [{"name": "a"}, {"name": "a"}]}, "spec.pod.volumes[1].name a is used twice"),
        (
            {"volumes": [{"name": "a"}], "volumeMounts": [{"name": "a", "mountPath": "rel"}]},
            "mountPath must be an absolute path",
        ),
        (
            {"volumes": [{"name": "a"}], "volumeMounts": [{"name": "a", "mountPath": "/x/"}]},
            "without a trailing '/'",
        ),
        (
            {"volumes": [{"name": "a"}], "volumeMounts": [{"name": "a", "mountPath": "/x/../tmp"}]},
            "may not contain . or .. segments",
        ),
        (
            {
                "volumes": [{"name": "a"}],
                "volumeMounts": [
                    {"name": "a", "mountPath": "/x"},
                    {"name": "a", "mountPath": "/x"},
                ],
            },
            "spec.pod.volumeMounts[1].mountPath /x is used twice",
        ),
        (
            {
                "volumes": [{"name": "a"}],
                "volumeMounts": [
                    {"name": "a", "mountPath": "/x", "subPath": "p", "subPathExpr": "q"}
                ],
            },
            "set subPath or subPathExpr, not both",
        ),
    ],
)
def test_each_volume_rule_reports_a_clear_problem(pod, fragment):
    problems = _pod_problems(**pod)
    assert any(fragment in p for p in problems), problems


def _rules(schema: dict) -> str:
    return "\n".join(r["rule"] for r in schema.get("x-kubernetes-validations", []))


def test_the_crds_pod_rules_name_what_the_operator_reserves():
    from agent_operator import contract

    props = _crd_spec_schema()["properties"]
    pod = props["pod"]["properties"]
    labels = _rules(pod["labels"])
    assert f"{list(RESERVED_LABELS)}.exists(k, k in self)" in labels
    for schema in (pod["labels"], pod["annotations"]):
        assert f"!k.startsWith('{RESERVED_PREFIX}')" in _rules(schema)
    assert pod["labels"] == props["service"]["properties"]["labels"]
    assert pod["annotations"] == props["service"]["properties"]["annotations"]
    assert f"!(self.name in {list(contract.VOLUMES)})" in _rules(pod["volumes"]["items"])
    assert f"{list(contract.MOUNT_PATHS)}.all(r," in _rules(pod["volumeMounts"]["items"])
    assert pod["labels"]["additionalProperties"]["pattern"] == LABEL_VALUE_PATTERN
    assert pod["nodeSelector"]["additionalProperties"]["pattern"] == LABEL_VALUE_PATTERN
    assert pod["volumes"]["items"]["properties"]["name"]["pattern"] == DNS_LABEL_PATTERN
    for name in ("serviceAccountName", "priorityClassName"):
        assert pod[name]["pattern"] == DNS_SUBDOMAIN_PATTERN
    secret = pod["imagePullSecrets"]["items"]["properties"]["name"]
    assert secret["pattern"] == DNS_SUBDOMAIN_PATTERN
    assert pod["volumeMounts"]["items"]["properties"]["mountPath"]["pattern"] == MOUNT_PATH_PATTERN
    toleration = pod["tolerations"]["items"]["properties"]
    assert tuple(toleration["operator"]["enum"]) == TOLERATION_OPERATORS
    assert tuple(toleration["effect"]["enum"]) == TOLERATION_EFFECTS
    spread = pod["topologySpreadConstraints"]["items"]["properties"]
    assert tuple(spread["whenUnsatisfiable"]["enum"]) == WHEN_UNSATISFIABLE


def test_every_pod_field_is_explained():
    # `kubectl explain agentdeployment.spec.pod.<field>` prints these descriptions.
    pod = _crd_spec_schema()["properties"]["pod"]
    assert pod["description"]
    for name, schema in pod["properties"].items():
        assert len(schema.get("description", "")) > 20, name


def test_the_readmes_pod_example_is_a_valid_spec():
    import textwrap

    readme = (CRD.parents[2] / "README.md").read_text()
    operator = readme.split("<!-- section: operator -->")[1].split("<!-- /section: operator -->")[0]
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", operator, re.DOTALL) if "pod:" in b]
    example = yaml.safe_load(textwrap.dedent(block))["spec"]
    spec = parse_spec({"image": "agent:1", **example})
    assert spec.pod.service_account_name == "agent-identity"
    assert validate(spec) == []
