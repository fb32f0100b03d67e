"""The pure builders of an AgentDeployment's children."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from agent_operator.builders import (
    Owner,
    build_children,
    build_configmap,
    build_deployment,
    build_hpa,
    build_pdb,
    build_service,
    build_service_account,
    config_checksum,
    selector_labels,
    selector_string,
)
from agent_operator.spec import parse_spec, validate

OWNER = Owner(name="demo", namespace="team-a", uid="1234-abcd")


def spec(**raw):
    return parse_spec({"image": "moorage/agent:1.0", **raw})


def test_every_child_carries_a_controller_owner_reference_and_our_labels():
    for _, _, obj in build_children(OWNER, spec(autoscaling={"enabled": True})):
        assert obj is not None
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "moorage.dev/v1beta1",
                "kind": "AgentDeployment",
                "name": "demo",
                "uid": "1234-abcd",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "moorage-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == "demo"


def test_deployment_sets_replicas_only_while_autoscaling_is_off():
    assert build_deployment(OWNER, spec(replicas=3))["spec"]["replicas"] == 3
    auto = build_deployment(OWNER, spec(replicas=3, autoscaling={"enabled": True}))
    assert "replicas" not in auto["spec"]


def test_hpa_exists_only_while_autoscaling_is_on():
    assert build_hpa(OWNER, spec()) is None
    hpa = build_hpa(OWNER, spec(autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 4}))
    assert hpa is not None
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "demo",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_an_inflight_hpa_targets_the_services_gauge_per_pod():
    from agent_service.metrics import TURNS_IN_FLIGHT

    auto = {"enabled": True, "metric": "inflight", "targetTurnsInFlightPerPod": 12}
    hpa = build_hpa(OWNER, spec(autoscaling=auto))
    assert hpa is not None
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": TURNS_IN_FLIGHT},
                "target": {"type": "AverageValue", "averageValue": "12"},
            },
        }
    ]


def test_the_hpa_scales_up_at_once_and_down_slowly_one_pod_at_a_time():
    hpa = build_hpa(OWNER, spec(autoscaling={"enabled": True, "scaleDownPods": 2}))
    assert hpa is not None
    up, down = hpa["spec"]["behavior"]["scaleUp"], hpa["spec"]["behavior"]["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 0
    assert (up["selectPolicy"], [p["value"] for p in up["policies"]]) == ("Max", [4, 100])
    assert down["stabilizationWindowSeconds"] == 300
    assert (down["selectPolicy"], down["policies"]) == (
        "Min",
        [{"type": "Pods", "value": 2, "periodSeconds": 60}],
    )


def test_selector_matches_the_pod_labels_and_the_status_selector():
    dep = build_deployment(OWNER, spec())
    match = dep["spec"]["selector"]["matchLabels"]
    assert match == {"app.kubernetes.io/name": "agent", "app.kubernetes.io/instance": "demo"}
    assert match.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert build_service(OWNER, spec())["spec"]["selector"] == match
    assert selector_string("demo") == "app.kubernetes.io/name=agent,app.kubernetes.io/instance=demo"


def test_pod_is_hardened_and_probed_per_the_service_contract():
    pod = build_deployment(OWNER, spec())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_grace_period_covers_drain_then_shutdown_with_margin():
    dep = build_deployment(
        OWNER, spec(termination={"drainDelaySeconds": 7, "shutdownTimeoutSeconds": 20})
    )
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 7 + 20 + 5
    assert pod["containers"][0]["lifecycle"]["preStop"] == {"sleep": {"seconds": 7}}
    data = build_configmap(OWNER, spec(termination={"shutdownTimeoutSeconds": 20}))["data"]
    assert data["AGENT_SHUTDOWN_TIMEOUT_S"] == "20"
    assert data["AGENT_DRAIN_DELAY_S"] == "0"


def test_configmap_carries_the_agent_contract_and_no_secret():
    data = build_configmap(
        OWNER,
        spec(
            model={"name": "openai:gpt-4o-mini", "baseUrl": "http://llm:8000/v1", "maxSteps": 4},
            modelApiKeySecretRef={"name": "llm", "key": "token"},
            session={"urlSecretRef": {"name": "redis", "key": "url"}},
        ),
    )["data"]
    assert data["AGENT_MODEL"] == "openai:gpt-4o-mini"
    assert data["AGENT_MODEL_BASE_URL"] == "http://llm:8000/v1"
    assert data["AGENT_MAX_STEPS"] == "4"
    assert data["AGENT_HOST"] == "0.0.0.0"
    assert "AGENT_SESSION_URL" not in data
    assert not any("API_KEY" in key for key in data)


def test_secrets_are_mounted_as_files_from_one_or_two_secrets():
    one = build_deployment(
        OWNER,
        spec(
            modelApiKeySecretRef={"name": "s", "key": "k"},
            session={"urlSecretRef": {"name": "s", "key": "u"}},
        ),
    )["spec"]["template"]["spec"]
    volume = next(v for v in one["volumes"] if v["name"] == "secrets")
    assert volume["secret"]["items"] == [
        {"key": "u", "path": "session-url"},
        {"key": "k", "path": "model-api-key"},
    ]
    env = {e["name"]: e["value"] for e in one["containers"][0]["env"]}
    assert env == {
        "AGENT_SESSION_URL_FILE": "/etc/moorage/secrets/session-url",
        "AGENT_MODEL_API_KEY_FILE": "/etc/moorage/secrets/model-api-key",
    }
    two = build_deployment(
        OWNER,
        spec(
            modelApiKeySecretRef={"name": "llm", "key": "k"},
            session={"urlSecretRef": {"name": "redis", "key": "u"}},
        ),
    )["spec"]["template"]["spec"]
    volume = next(v for v in two["volumes"] if v["name"] == "secrets")
    assert [s["secret"]["name"] for s in volume["projected"]["sources"]] == ["redis", "llm"]


def test_a_config_change_changes_the_pod_template_checksum():
    assert config_checksum(spec()) == config_checksum(spec())
    assert config_checksum(spec()) != config_checksum(spec(model={"maxSteps": 3}))
    assert config_checksum(spec()) == config_checksum(spec(image="moorage/agent:2.0"))


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        ({}, {"maxUnavailable": 1}),
        ({"minAvailable": "50%"}, {"minAvailable": "50%"}),
        ({"maxUnavailable": 2}, {"maxUnavailable": 2}),
    ],
)
def test_pdb_uses_the_bound_given_or_max_unavailable_one(budget, expected):
    pdb = build_pdb(OWNER, spec(disruptionBudget=budget))
    assert pdb is not None
    bounds = {k: v for k, v in pdb["spec"].items() if k in ("minAvailable", "maxUnavailable")}
    assert bounds == expected


def test_a_disabled_pdb_is_not_built():
    assert build_pdb(OWNER, spec(disruptionBudget={"enabled": False})) is None


def test_extra_env_is_appended_after_the_operator_variables():
    dep = build_deployment(OWNER, spec(env=[{"name": "AGENT_ECHO_LATENCY_MS", "value": "5"}]))
    assert dep["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "AGENT_ECHO_LATENCY_MS", "value": "5"}
    ]


def test_children_are_valid_kubernetes_objects():
    full = spec(
        autoscaling={"enabled": True},
        modelApiKeySecretRef={"name": "llm", "key": "k"},
        session={"urlSecretRef": {"name": "redis", "key": "u"}},
    )
    for _, _, obj in build_children(OWNER, full):
        assert obj is not None
        kubernetes_validate.validate(obj, "1.35", strict=True)


def test_client_api_keys_are_a_file_in_the_secrets_volume_and_budgets_are_config():
    built = spec(
        session={"urlSecretRef": {"name": "s", "key": "u"}},
        clients={
            "apiKeysSecretRef": {"name": "clients", "key": "keys"},
            "sessionBudgetTokens": 5000,
            "turnReserveTokens": 1000,
        },
    )
    pod = build_deployment(OWNER, built)["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["AGENT_API_KEYS_FILE"] == "/etc/moorage/secrets/api-keys"
    volume = next(v for v in pod["volumes"] if v["name"] == "secrets")
    assert volume["projected"]["sources"][-1]["secret"] == {
        "name": "clients",
        "items": [{"key": "keys", "path": "api-keys"}],
    }
    data = build_configmap(OWNER, built)["data"]
    assert data["AGENT_BUDGET_SESSION_TOKENS"] == "5000"
    assert data["AGENT_BUDGET_TURN_TOKENS"] == "1000"
    assert "AGENT_BUDGET_CLIENT_DAILY_TOKENS" not in data


def test_a_turn_reservation_larger_than_a_budget_is_an_invalid_spec():
    problems = validate(spec(clients={"sessionBudgetTokens": 100, "turnReserveTokens": 101}))
    assert problems == [
        "spec.clients.turnReserveTokens must not exceed clients.sessionBudgetTokens: "
        "no turn could ever run"
    ]
    assert validate(spec(clients={"sessionBudgetTokens": 100, "turnReserveTokens": 100})) == []


def test_the_clients_keys_are_a_source_of_their_own_even_in_the_same_secret():
    built = spec(
        modelApiKeySecretRef={"name": "s", "key": "k"},
        session={"urlSecretRef": {"name": "s", "key": "u"}},
        clients={"apiKeysSecretRef": {"name": "s", "key": "keys"}},
    )
    pod = build_deployment(OWNER, built)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "secrets")
    assert [s["secret"]["items"] for s in volume["projected"]["sources"]] == [
        [{"key": "u", "path": "session-url"}, {"key": "k", "path": "model-api-key"}],
        [{"key": "keys", "path": "api-keys"}],
    ]


# spec.pod and spec.service: placement and identity of the pods, built as the chart does.

PLACED = {
    "nodeSelector": {"pool": "agents"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "agents", "effect": "NoSchedule"}
    ],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "demo"}},
                    },
                }
            ]
        }
    },
    "priorityClassName": "agents-high",
    "imagePullSecrets": [{"name": "registry"}, {"name": "mirror"}],
    "annotations": {"team.example/owner": "ml"},
    "labels": {"team": "ml"},
    "volumes": [{"name": "prompts", "configMap": {"name": "prompts"}}],
    "volumeMounts": [{"name": "prompts", "mountPath": "/etc/prompts", "readOnly": True}],
}


def _template(**pod):
    return build_deployment(OWNER, spec(pod=pod))["spec"]["template"]


def test_the_pod_is_placed_where_the_spec_says():
    pod = _template(**PLACED)["spec"]
    assert pod["nodeSelector"] == PLACED["nodeSelector"]
    assert pod["tolerations"] == PLACED["tolerations"]
    assert pod["affinity"] == PLACED["affinity"]
    assert pod["priorityClassName"] == "agents-high"
    assert pod["imagePullSecrets"] == [{"name": "registry"}, {"name": "mirror"}]


def test_without_placement_the_pod_has_none_of_those_fields():
    pod = _template()["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        assert key not in pod


def test_the_spec_labels_and_annotations_join_the_operators_own():
    meta = _template(**PLACED)["metadata"]
    assert meta["labels"]["team"] == "ml"
    assert meta["labels"]["app.kubernetes.io/instance"] == "demo"
    assert meta["annotations"]["team.example/owner"] == "ml"
    assert {"moorage.dev/config-checksum", "moorage.dev/template-hash"} <= meta[
        "annotations"
    ].keys()


def test_the_operators_own_labels_are_the_ones_the_spec_may_not_set():
    from agent_operator.builders import TEMPLATE_HASH_ANNOTATION, common_labels
    from agent_operator.spec import RESERVED_LABELS, RESERVED_PREFIX

    assert set(common_labels("demo")) <= set(RESERVED_LABELS)
    gated = spec(rollout={"gate": {"prompts": [{"message": "hi", "contains": "hi"}]}})
    annotations = build_deployment(OWNER, gated)["spec"]["template"]["metadata"]["annotations"]
    assert all(key.startswith(RESERVED_PREFIX) for key in annotations)
    assert TEMPLATE_HASH_ANNOTATION in annotations


def test_extra_volumes_and_mounts_follow_the_contracts():
    pod = _template(**PLACED)["spec"]
    (container,) = pod["containers"]
    assert [v["name"] for v in pod["volumes"]] == ["tmp", "prompts"]
    assert pod["volumes"][-1] == {"name": "prompts", "configMap": {"name": "prompts"}}
    assert container["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "prompts", "mountPath": "/etc/prompts", "readOnly": True},
    ]


def test_the_default_spread_is_over_zones_and_nodes_and_a_given_one_replaces_it():
    default = _template()["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in default] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]
    given = {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "DoNotSchedule",
    }
    (built,) = _template(topologySpreadConstraints=[given])["spec"]["topologySpreadConstraints"]
    # Without a labelSelector a constraint would count no pods at all: it counts this resource's.
    assert built == {**given, "labelSelector": {"matchLabels": selector_labels("demo")}}
    own = {**given, "labelSelector": {"matchLabels": {"tier": "agents"}}}
    (built,) = _template(topologySpreadConstraints=[own])["spec"]["topologySpreadConstraints"]
    assert built == own
    assert "topologySpreadConstraints" not in _template(topologySpreadConstraints=[])["spec"]


def test_the_pods_run_under_the_operators_service_account_unless_the_spec_names_one():
    own = build_service_account(OWNER, spec())
    assert own is not None
    assert own["metadata"]["name"] == "demo"
    assert own["automountServiceAccountToken"] is False
    assert _template()["spec"]["serviceAccountName"] == "demo"
    named = spec(pod={"serviceAccountName": "agent-identity"})
    assert build_service_account(OWNER, named) is None  # so a full pass deletes ours
    template = build_deployment(OWNER, named)["spec"]["template"]["spec"]
    assert template["serviceAccountName"] == "agent-identity"
    assert template["automountServiceAccountToken"] is False


def test_a_spec_naming_the_operators_own_service_account_keeps_it():
    # Deleting it would delete the ServiceAccount the pods run under.
    assert build_service_account(OWNER, spec(pod={"serviceAccountName": "demo"})) is not None


def test_the_service_account_comes_before_the_deployment():
    kinds = [kind.kind for kind, _, _ in build_children(OWNER, spec())]
    assert kinds.index("ServiceAccount") < kinds.index("Deployment")


def test_the_service_gets_the_spec_labels_and_annotations():
    service = build_service(
        OWNER,
        spec(service={"port": 81, "labels": {"tier": "web"}, "annotations": {"lb.example/x": "1"}}),
    )
    assert service["metadata"]["labels"]["tier"] == "web"
    assert service["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "moorage-operator"
    assert service["metadata"]["annotations"] == {"lb.example/x": "1"}
    assert service["spec"]["ports"][0]["port"] == 81
    assert "annotations" not in build_service(OWNER, spec())["metadata"]


@pytest.mark.parametrize(
    "pod",
    [
        {"nodeSelector": {"pool": "agents"}},
        {"tolerations": [{"key": "k", "operator": "Exists"}]},
        {"affinity": PLACED["affinity"]},
        {"topologySpreadConstraints": []},
        {"priorityClassName": "high"},
        {"imagePullSecrets": [{"name": "registry"}]},
        {"serviceAccountName": "agent-identity"},
        {"annotations": {"a": "1"}},
        {"labels": {"team": "ml"}},
        {"volumes": [{"name": "v", "emptyDir": {}}]},
        {
            "volumes": [{"name": "v", "emptyDir": {}}],
            "volumeMounts": [{"name": "v", "mountPath": "/v"}],
        },
    ],
    ids=lambda pod: "+".join(pod),
)
def test_each_pod_field_makes_a_new_revision(pod):
    from agent_operator.builders import TEMPLATE_HASH_ANNOTATION

    def revision(**fields):
        return _template(**fields)["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]

    # The revision (the template hash) is what a rollout and its rollback are judged by.
    base = {"volumes": [{"name": "v", "emptyDir": {}}]} if "volumeMounts" in pod else {}
    assert revision(**pod) != revision(**base)


@pytest.mark.parametrize(
    ("path", "edit"),
    [
        ("nodeSelector", lambda pod: pod.pop("nodeSelector")),
        ("tolerations", lambda pod: pod["tolerations"].clear()),
        ("affinity", lambda pod: pod.pop("affinity")),
        ("priorityClassName", lambda pod: pod.update(priorityClassName="low")),
        ("volumes", lambda pod: pod["volumes"].pop()),
        ("serviceAccountName", lambda pod: pod.update(serviceAccountName="default")),
    ],
)
def test_a_hand_edit_of_a_pod_field_is_drift(path, edit):
    from agent_operator.drift import drifted_fields

    desired = build_deployment(OWNER, spec(pod=PLACED))
    live = copy.deepcopy(desired)
    pod = live["spec"]["template"]["spec"]
    # What the API server adds to a volume and a toleration is not drift.
    pod["volumes"][-1]["configMap"]["defaultMode"] = 420
    assert drifted_fields(desired, live) == []
    edit(pod)
    assert any(f".spec.template.spec.{path}" in p for p in drifted_fields(desired, live))


def test_a_hand_edit_of_a_pod_label_is_drift():
    from agent_operator.drift import drifted_fields

    desired = build_deployment(OWNER, spec(pod=PLACED))
    live = copy.deepcopy(desired)
    live["spec"]["template"]["metadata"]["labels"].pop("team")
    assert drifted_fields(desired, live) == [".spec.template.metadata.labels.team"]


def test_placed_children_are_valid_kubernetes_objects():
    full = spec(
        pod={
            **PLACED,
            "serviceAccountName": "agent-identity",
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "DoNotSchedule",
                }
            ],
        },
        service={"labels": {"tier": "web"}, "annotations": {"a": "1"}},
    )
    assert validate(full) == []
    for _, _, obj in build_children(OWNER, full):
        if obj is not None:
            kubernetes_validate.validate(obj, "1.35", strict=True)
    own = build_children(OWNER, spec())
    account = next(obj for kind, _, obj in own if kind.kind == "ServiceAccount")
    kubernetes_validate.validate(account, "1.35", strict=True)
