"""The pure builders of an AgentDeployment's children."""

from __future__ import annotations

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
    config_checksum,
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
